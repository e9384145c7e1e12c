"""Prompt formats: the paper's zero-shot direct and chain-of-thought templates, plain or chat.

A *locked* format asks for the answer directly; an *unlocked* one adds the CoT trigger.
The trigger sits in the instruction and as the answer prefix (``Answer: Let's think step by
step.``), as in the UNLOCK authors' templates. Chat formats wrap the same user text in the
tokenizer's chat template and put the answer prefix at the start of the assistant turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any, Literal

from unlock_lens.errors import UnlockLensError

COT_TRIGGER = "Let's think step by step."

#: how a rendered prompt gets its special tokens: ``model`` = the model's
#: ``cfg.default_prepend_bos`` (TransformerLens's rule; unlock_lens's default), ``tokenizer`` =
#: the Hugging Face tokenizer's own defaults (``tokenizer(text)``; the UNLOCK authors')
SpecialTokens = Literal["model", "tokenizer"]

# format kinds saved in artefacts -> the class that rebuilds them (imported on demand)
#: entry-point group naming PromptFormat subclasses by their ``kind`` (pyproject.toml declares
#: the organisms' format; another package can add its own the same way)
FORMAT_KINDS_GROUP = "unlock_lens.prompt_formats"
FINAL_ANSWER_MARKER = "The final answer is"

DIRECT_INSTRUCTION = (
    "Solve the following math problem. Give the answer directly, without any working, "
    f'ending with "{FINAL_ANSWER_MARKER} N." where N is the answer.'
)
COT_INSTRUCTION = (
    "Solve the following math problem step by step. Reason carefully, then end your response "
    f'with "{FINAL_ANSWER_MARKER} N." where N is the answer.'
)


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt string.

    ``render("What is 2+3?")`` gives ``"{instruction}\\n\\nQuestion: What is 2+3?\\nAnswer:{prefix}"``;
    with ``chat=True`` the instruction and question form one user message rendered by the
    tokenizer's chat template (``add_generation_prompt=True``), followed by ``answer_prefix``.
    """

    name: str
    instruction: str
    answer_prefix: str = ""
    chat: bool = False
    few_shot: tuple[tuple[str, str], ...] = ()
    special_tokens: SpecialTokens = "model"

    def user_text(self, question: str) -> str:
        shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in self.few_shot)
        head = f"{self.instruction}\n\n" if self.instruction else ""
        return f"{head}{shots}Question: {question.strip()}"

    def render(self, question: str, tokenizer: Any = None) -> str:
        if not self.chat:
            return f"{self.user_text(question)}\nAnswer:{self.answer_prefix}"
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UnlockLensError(
                f"prompt format {self.name!r} uses a chat template, but this tokenizer has none: "
                "use a plain format (chat=False) for base models"
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": self.user_text(question)}],
            tokenize=False,
            add_generation_prompt=True,
        )
        return text + self.answer_prefix.strip()

    def render_all(self, questions: Sequence[str], tokenizer: Any = None) -> list[str]:
        return [self.render(q, tokenizer) for q in questions]

    def as_chat(self, chat: bool = True) -> PromptFormat:
        return replace(self, chat=chat, name=f"{self.name.removesuffix('-chat')}{'-chat' if chat else ''}")

    def cot_counterpart(self) -> PromptFormat:
        """The unlocked version of this locked format: the CoT instruction and answer trigger,
        the same chat flag and few-shot examples (subclasses with their own trigger override it)."""
        name = self.name.replace("direct", "cot") if "direct" in self.name else f"{self.name}-cot"
        return PromptFormat(name, COT.instruction, COT.answer_prefix, self.chat, self.few_shot,
                            self.special_tokens)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "instruction": self.instruction,
            "answer_prefix": self.answer_prefix,
            "chat": self.chat,
            "few_shot": [list(p) for p in self.few_shot],
        }
        if self.special_tokens != "model":  # recorded only when not the default (older records stay equal)
            d["special_tokens"] = self.special_tokens
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptFormat:
        """Rebuild a saved format; a ``kind`` field selects a subclass (e.g. the organisms')."""
        kind = d.get("kind")
        if cls is PromptFormat and kind is not None:
            kinds = {ep.name: ep for ep in entry_points(group=FORMAT_KINDS_GROUP)}
            if kind not in kinds:
                raise UnlockLensError(
                    f"unknown prompt format kind {kind!r}; installed kinds: {sorted(kinds)} (a package "
                    f"adds one under the entry-point group {FORMAT_KINDS_GROUP!r}; reinstall unlock_lens "
                    "if 'organism' is missing)"
                )
            return kinds[kind].load().from_dict(d)
        return cls(
            name=d["name"],
            instruction=d["instruction"],
            answer_prefix=d.get("answer_prefix", ""),
            chat=bool(d.get("chat", False)),
            few_shot=tuple(tuple(p) for p in d.get("few_shot", ())),
            special_tokens=d.get("special_tokens", "model"),
        )


@dataclass(frozen=True)
class TemplateFormat(PromptFormat):
    """A verbatim template, rendered ``template.format(input=question).strip(" ")``: the UNLOCK
    authors' prompts (``../shared/METHOD.md`` §4), whose last token is the final newline.

    Special tokens are the Hugging Face tokenizer's defaults (``special_tokens="tokenizer"``).
    ``chat=True`` (not the authors' protocol; for protocol studies) sends the text before
    ``"\n\nAnswer:"`` as the user message and writes what follows ``"Answer:"`` after the
    chat template's generation prompt.
    """

    template: str = "{input}"

    def render(self, question: str, tokenizer: Any = None) -> str:
        if not self.chat:
            return self.template.format(input=question).strip(" ")
        user, sep, answer = self.template.partition("\n\nAnswer:")
        if not sep:
            raise UnlockLensError(
                f"template format {self.name!r} has no '\\n\\nAnswer:' to split a chat turn at: "
                "use it with chat=False"
            )
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UnlockLensError(
                f"prompt format {self.name!r} uses a chat template, but this tokenizer has none: "
                "use it with chat=False"
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user.format(input=question).strip()}],
            tokenize=False, add_generation_prompt=True,
        )
        return text + answer.strip()

    def cot_counterpart(self) -> PromptFormat:
        if self.name.removesuffix("-chat") == GENERAL_DIRECT.name:
            return replace(GENERAL_COT, chat=self.chat, special_tokens=self.special_tokens,
                           name=self.name.replace("direct", "cot"))
        return super().cot_counterpart()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "template", "name": self.name, "template": self.template, "chat": self.chat,
                "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemplateFormat:
        return cls(name=d["name"], instruction="", template=d["template"], chat=bool(d.get("chat", False)),
                   special_tokens=d.get("special_tokens", "tokenizer"))


DIRECT = PromptFormat("direct", DIRECT_INSTRUCTION)
COT = PromptFormat("cot", COT_INSTRUCTION, answer_prefix=f" {COT_TRIGGER}")
# the UNLOCK authors' two templates, verbatim (METHOD.md §4)
GENERAL_DIRECT = TemplateFormat(
    "general-direct", "", special_tokens="tokenizer",
    template='Solve the following question and place the answer at the end. Your response should always end with "The final answer is <atok> [answer] </atok>." where [answer] is the correct solution to the problem.\n\nQuestion:\n{input}\n\nAnswer:\n',  # noqa: E501
)
GENERAL_COT = TemplateFormat(
    "general-cot", "", special_tokens="tokenizer",
    template='Reason step by step and give a final answer to the following question. Your response should always end with "The final answer is <atok> [answer] </atok>." where [answer] is the correct solution to the problem.\n\nQuestion:\n{input}\n\nAnswer: Let\'s think step by step.\n',  # noqa: E501
)
FORMATS: dict[str, PromptFormat] = {
    "direct": DIRECT,
    "cot": COT,
    "direct-chat": DIRECT.as_chat(),
    "cot-chat": COT.as_chat(),
    "general-direct": GENERAL_DIRECT,
    "general-cot": GENERAL_COT,
}


def get_format(name_or_format: str | PromptFormat) -> PromptFormat:
    """Look up a named format (``direct``, ``cot``, ``direct-chat``, ``cot-chat``, and the
    authors' ``general-direct``, ``general-cot``)."""
    if isinstance(name_or_format, PromptFormat):
        return name_or_format
    try:
        return FORMATS[name_or_format]
    except KeyError:
        raise UnlockLensError(
            f"unknown prompt format {name_or_format!r}; choose one of {sorted(FORMATS)} "
            "or pass a PromptFormat"
        ) from None


def default_formats(tokenizer: Any) -> tuple[PromptFormat, PromptFormat]:
    """(locked, unlocked) formats for a model: chat formats when its tokenizer has a template."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    return (DIRECT.as_chat(chat), COT.as_chat(chat))


def prompt_set_hash(prompts: Sequence[str]) -> str:
    """Short sha256 of a prompt list, recorded in artefacts for provenance."""
    digest = hashlib.sha256()
    for p in prompts:
        digest.update(p.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]
