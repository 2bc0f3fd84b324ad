"""Prompts -> TextCondition(embeds float32 [B, L, C], mask int64 [B, L], pooled float32 [B, P] | None), as each
family's pipeline `encode_prompt` computes them (diffusers 0.42, clean_caption off):

    family        embeds                                                   mask            pooled
    pixart-*      T5 last state, 120 (alpha) / 300 (sigma) tokens           the tokenizer's  -
    sd3           CLIP-L | CLIP-G penultimate states, zero-padded to T5's   all ones        CLIP-L | CLIP-G
                  width, then T5's last state (256 tokens) along the sequence                projections
    flux          T5 last state (512 tokens)                                all ones        CLIP-L pooler output
    sana          Gemma-2 last state of the complex human instruction +     the tokenizer's  -
                  prompt; token 0 and the last 299 of 300 kept
    sdxl          CLIP-L | CLIP-G penultimate states (77 tokens)            all ones        CLIP-G projection
    sd15          CLIP-L last state (77 tokens)                             all ones        -

All ones where the pipeline passes the network no mask. The null condition (what guidance contrasts with) is the
pipeline's negative embedding of "": encoded as a prompt, except SANA's (no instruction, 300 tokens, no selection)
and SDXL's (zeros when the pipeline's force_zeros_for_empty_prompt is set, as for a missing negative prompt).

Each tokenizer reads a prompt's prefix only (simcli.data.prompts.token_prefix), so a 10 MB prompt costs its token
limit to tokenize, not its length.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from simcli.data.prompts import token_prefix
from simcli.nets.text_condition import TextCondition
from simcli.teachers.pipeline_families import PipelineFamily, TextPart


class PartOutput(NamedTuple):
    """One text encoder's output: the kept hidden state [B, L, C] (or None), the tokenizer's mask [B, L] and the
    kept pooled output [B, P] (or None)."""

    states: torch.Tensor | None
    mask: torch.Tensor
    pooled: torch.Tensor | None


def sana_instruction() -> str:
    """SanaPipeline's default complex human instruction, joined by newlines as its encode_prompt joins it (read from
    the installed diffusers: SanaPipeline.__call__'s default)."""
    import inspect

    from simcli.nets.t2i_extra import require_diffusers

    default = inspect.signature(require_diffusers().SanaPipeline.__call__).parameters["complex_human_instruction"].default
    return "\n".join(default)


class PromptEncoder:
    """encode(prompts) -> TextCondition on the encoders' device (module docstring); `null_condition()` -> one row.

    tokenizers, models  by component folder name (family.text); loaded by DiffusersPipelineSource.encoder
    max_tokens          the prompt token limit (the pipeline's max_sequence_length; CLIP families: 77)
    encoder_id          what identifies these embeddings (cache keys)
    zero_null           SDXL with force_zeros_for_empty_prompt: the null condition is zeros
    instruction         SANA: the complex human instruction prefixed to every prompt
    """

    def __init__(self, family: PipelineFamily, tokenizers: dict[str, Any], models: dict[str, Any], max_tokens: int,
                 encoder_id: str, batch_size: int = 64, *, zero_null: bool = False, instruction: str = ""):
        self.family, self.tokenizers, self.models = family, tokenizers, models
        self.max_tokens = int(max_tokens)
        self.encoder_id = encoder_id
        self.batch_size = max(1, int(batch_size))
        self.zero_null, self.instruction = zero_null, instruction
        self._instruction_tokens = len(tokenizers[family.text[0].tokenizer].encode(instruction)) if instruction else 0

    def limit(self, part: TextPart) -> int:
        """The token limit of one tokenizer: its model_max_length (CLIP) or the prompt limit."""
        return int(self.tokenizers[part.tokenizer].model_max_length) if part.limit == "model" else self.max_tokens

    def readable(self, prompt: str, part: TextPart | None = None) -> str:
        """The part of a prompt a tokenizer reads, preprocessed as the family's pipeline does (lower-cased and
        stripped for PixArt and SANA); the first text encoder's tokenizer unless `part`."""
        part = part or self.family.text[0]
        tokenizer, lower = self.tokenizers[part.tokenizer], self.family.lowercase
        text = token_prefix(str(prompt), self.limit(part),
                            lambda t: len(tokenizer.tokenize(t.lower() if lower else t)))
        return text.lower().strip() if lower else text

    def run(self, index: int, prompts: list[str], *, prefix: str = "", max_length: int | None = None) -> PartOutput:
        """Text encoder `index` of the family on the prompts (prefixed with `prefix` after preprocessing), padded and
        truncated to max_length tokens (default: its limit)."""
        part = self.family.text[index]
        tokenizer, model = self.tokenizers[part.tokenizer], self.models[part.encoder]
        texts = [prefix + self.readable(p, part) for p in prompts]
        tokens = tokenizer(texts, padding="max_length", max_length=max_length or self.limit(part), truncation=True,
                           add_special_tokens=True, return_tensors="pt")
        device = next(model.parameters()).device
        mask = tokens.attention_mask.to(device)
        pass_mask = part.pass_mask or bool(model.config.to_dict().get("use_attention_mask", False))
        out = model(tokens.input_ids.to(device), attention_mask=mask if pass_mask else None,
                    output_hidden_states=part.state == "penultimate")
        states = out.hidden_states[-2] if part.state == "penultimate" else None
        if part.state == "last":
            states = out.last_hidden_state
        pooled = None if part.pooled is None else (out.text_embeds if part.pooled == "projected" else out.pooler_output)
        return PartOutput(states, mask, pooled)

    # ------------------------------------------------------------------ the families

    def _encode(self, prompts: list[str]) -> TextCondition:
        key = self.family.key
        if key == "sd3":
            return self._sd3(prompts)
        if key == "flux":
            clip, t5 = self.run(0, prompts), self.run(1, prompts)
            return _unmasked(t5.states, clip.pooled)
        if key == "sdxl":
            clip_l, clip_g = self.run(0, prompts), self.run(1, prompts)
            return _unmasked(torch.cat([clip_l.states, clip_g.states], dim=-1), clip_g.pooled)
        if key == "sana":
            return self._sana(prompts)
        out = self.run(0, prompts)  # PixArt (its transformer takes the mask), SD1.5 (its UNet takes none)
        return TextCondition(out.states, out.mask) if key.startswith("pixart") else _unmasked(out.states, None)

    def _sd3(self, prompts: list[str]) -> TextCondition:
        clip_l, clip_g, t5 = self.run(0, prompts), self.run(1, prompts), self.run(2, prompts)
        clip = torch.cat([clip_l.states, clip_g.states], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.states.shape[-1] - clip.shape[-1]))
        return _unmasked(torch.cat([clip, t5.states], dim=-2), torch.cat([clip_l.pooled, clip_g.pooled], dim=-1))

    def _sana(self, prompts: list[str], instructed: bool = True) -> TextCondition:
        """SanaPipeline.encode_prompt: the instruction + prompt tokenized to len(instruction) + max_tokens - 2 tokens,
        then token 0 and the last max_tokens - 1 kept; the negative prompt without instruction or selection."""
        if not (instructed and self.instruction):
            out = self.run(0, prompts)
            return TextCondition(out.states, out.mask)
        out = self.run(0, prompts, prefix=self.instruction, max_length=self._instruction_tokens + self.max_tokens - 2)
        keep = [0, *range(out.states.shape[1] - self.max_tokens + 1, out.states.shape[1])]
        return TextCondition(out.states[:, keep], out.mask[:, keep])

    # ------------------------------------------------------------------ public

    def __call__(self, prompts: list[str]) -> TextCondition:
        parts = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                parts.append(_as_condition(self._encode(list(prompts[start:start + self.batch_size]))))
        if not parts:
            empty = self([""])
            return TextCondition(empty.embeds[:0], empty.mask[:0], None if empty.pooled is None else empty.pooled[:0])
        return TextCondition.cat(parts)

    def null_condition(self) -> TextCondition:
        """One row: the pipeline's negative embedding of the empty prompt (module docstring)."""
        with torch.no_grad():
            if self.family.key == "sana":
                return _as_condition(self._sana([""], instructed=False))
            null = self([""])
        if self.zero_null:
            return TextCondition(torch.zeros_like(null.embeds), null.mask,
                                 None if null.pooled is None else torch.zeros_like(null.pooled))
        return null


def _unmasked(embeds: torch.Tensor, pooled: torch.Tensor | None) -> TextCondition:
    """A condition whose network takes no mask: all tokens count."""
    return TextCondition(embeds, torch.ones(embeds.shape[:2], dtype=torch.int64, device=embeds.device), pooled)


def _as_condition(condition: TextCondition) -> TextCondition:
    """float32 embeddings and pooled output, int64 mask."""
    pooled = None if condition.pooled is None else condition.pooled.to(torch.float32)
    return TextCondition(condition.embeds.to(torch.float32), condition.mask.to(torch.int64), pooled)
