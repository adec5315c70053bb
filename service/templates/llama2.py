"""Meta's Llama-2 chat format, defined on tokens (llama/generation.py, `chat_completion`).

Each user/assistant pair is `BOS "[INST] {user.strip()} [/INST] {answer.strip()} " EOS` and the final user
message `BOS "[INST] {user.strip()} [/INST]"`, each string encoded on its own with BOS and EOS added by id;
a system message is folded into the first user message as `<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}` before
that strip. Roles must alternate user/assistant and the last message must be the user's.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import ModelError
from service.requests import Message, Role, ToolSpec
from service.templates.types import ChatTemplate, ModelTokens, Segment, TemplateRules, resolve_continuation
from service.templates.validation import developer_as_system, validate_conversation, validate_tools

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")  # what Meta's reference refuses in content

LLAMA2_RULES = TemplateRules(
    roles=frozenset({Role.SYSTEM, Role.USER, Role.ASSISTANT}),
    alternate=True,
    final_roles=frozenset({Role.USER}),
)


def _strip(pieces: list[Segment]) -> list[Segment]:
    """`str.strip()` applied to the concatenation of `pieces`, keeping each character's origin."""
    result = [piece for piece in pieces if piece.text]
    while result and not result[0].text.lstrip():
        result.pop(0)
    if result:
        result[0] = Segment(result[0].text.lstrip(), result[0].field)
    while result and not result[-1].text.rstrip():
        result.pop()
    if result:
        result[-1] = Segment(result[-1].text.rstrip(), result[-1].field)
    return result


class Llama2ChatTemplate(ChatTemplate):
    name = "llama-2"
    rules = LLAMA2_RULES
    reserved_strings = SPECIAL_TAGS
    control_by_id = True  # SentencePiece's encode never parses control-token text

    def __init__(self, tokens: ModelTokens) -> None:
        bos_id, eos_id = tokens.id_of(tokens.bos), tokens.id_of(tokens.eos)
        if tokens.bos is None or tokens.eos is None or bos_id is None or eos_id is None:
            raise ModelError("the 'llama-2' chat template needs the model's BOS and EOS control tokens")
        self._bos = Segment(tokens.bos, token_id=bos_id)
        self._eos = Segment(tokens.eos, token_id=eos_id)
        self.end_of_turn_tokens = (tokens.eos,)
        self.stop_strings = ()

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        add_generation_prompt: bool = True,
        continue_final_message: bool | None = None,
    ) -> list[Segment]:
        """`add_generation_prompt` has no effect: the format always ends with the user's `[/INST]`."""
        messages = developer_as_system(messages)
        validate_tools(tools, self.rules, self.name)
        continuing = resolve_continuation(messages, continue_final_message)
        validate_conversation(messages, self.rules, self.name, continue_final=continuing)
        turns: list[list[Segment]] = []
        start = 0
        if messages[0].role is Role.SYSTEM:
            system = Segment(messages[0].content, "messages[0].content")
            first_user = Segment(messages[1].content, "messages[1].content")
            turns.append([Segment(B_SYS), system, Segment(E_SYS), first_user])
            start = 2
        turns += [
            [Segment(m.content, f"messages[{i}].content")] for i, m in enumerate(messages) if i >= start
        ]
        segments: list[Segment] = []
        for prompt, answer in zip(turns[0::2], turns[1::2], strict=False):
            segments += [self._bos, Segment(B_INST + " "), *_strip(prompt), Segment(f" {E_INST} ")]
            segments += [*_strip(answer), Segment(" "), self._eos]
        segments += [self._bos, Segment(B_INST + " "), *_strip(turns[-1]), Segment(" " + E_INST)]
        return [segment for segment in segments if segment.text]
