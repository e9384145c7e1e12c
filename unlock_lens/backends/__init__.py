"""Optional engines for steered generation at scale.

``unlock_lens.backends.vllm``: vLLM (``pip install 'unlock-lens[vllm]'``, CUDA GPU); vLLM itself
is imported only when an engine is booted, so importing this package never needs it.
"""

__all__ = ["vllm"]
