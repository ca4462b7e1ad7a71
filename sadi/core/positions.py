"""The one padding-aware place that turns position policies into absolute indices.

A batch row holds `seq_length` real tokens, of which the first `prompt_length` are the
prompt (the user input) and the rest the continuation. Rows are padded to a common
`padded_length` on the left or on the right. Every method names which positions it reads
and edits by a policy; this module maps the policy to absolute [batch, pos] indices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

PositionPolicy = Literal["last_prompt", "last_token", "continuation", "response", "all"]
POLICIES: tuple[str, ...] = get_args(PositionPolicy)
PaddingSide = Literal["left", "right"]
# policies whose cells all lie at or after the last prompt token: a row's positions before
# it are those of the unsteered model (the sweep engine shares them across points)
SUFFIX_POLICIES: tuple[str, ...] = ("last_prompt", "last_token", "continuation", "response")


@dataclass(frozen=True)
class BatchLayout:
    """Where each row's real tokens, prompt and continuation sit in a padded batch.

    Attributes:
        seq_lengths: [batch] number of real (non-pad) tokens per row.
        prompt_lengths: [batch] number of prompt tokens per row (<= seq_lengths).
        padded_length: the batch's sequence dimension.
        padding_side: "left" (real tokens at the end) or "right" (at the start).
    """

    seq_lengths: Tensor  # [batch] long
    prompt_lengths: Tensor  # [batch] long
    padded_length: int
    padding_side: PaddingSide

    def __post_init__(self) -> None:
        if self.seq_lengths.shape != self.prompt_lengths.shape or self.seq_lengths.dim() != 1:
            raise ValueError(
                "seq_lengths and prompt_lengths must both be 1-D of the batch size, got "
                f"{tuple(self.seq_lengths.shape)} and {tuple(self.prompt_lengths.shape)}"
            )
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if bool((self.prompt_lengths < 1).any()):
            raise ValueError(f"every row needs a prompt of >= 1 token, got {self.prompt_lengths}")
        if bool((self.prompt_lengths > self.seq_lengths).any()):
            raise ValueError(
                f"prompt_lengths {self.prompt_lengths.tolist()} exceed seq_lengths "
                f"{self.seq_lengths.tolist()}"
            )
        if bool((self.seq_lengths > self.padded_length).any()):
            raise ValueError(
                f"seq_lengths {self.seq_lengths.tolist()} exceed padded_length {self.padded_length}"
            )

    @classmethod
    def from_attention_mask(
        cls, attention_mask: Tensor, prompt_lengths: Tensor | None = None
    ) -> BatchLayout:
        """Layout of a tokenizer-padded batch; without prompt_lengths the whole row is prompt.

        The padding side is read off the mask: a row that starts with padding is left-padded.
        """
        mask = attention_mask.bool()
        seq = mask.sum(dim=1).long()
        left = bool((~mask[:, 0]).any()) and not bool((~mask[:, -1]).any())
        return cls(
            seq_lengths=seq,
            prompt_lengths=seq.clone() if prompt_lengths is None else prompt_lengths.long(),
            padded_length=int(mask.shape[1]),
            padding_side="left" if left else "right",
        )

    @property
    def batch_size(self) -> int:
        return int(self.seq_lengths.shape[0])

    def rows(self, start: int, stop: int) -> BatchLayout:
        """The layout of rows [start, stop) alone (same padded length and side)."""
        return BatchLayout(
            seq_lengths=self.seq_lengths[start:stop],
            prompt_lengths=self.prompt_lengths[start:stop],
            padded_length=self.padded_length,
            padding_side=self.padding_side,
        )

    def starts(self) -> Tensor:
        """[batch] absolute index of each row's first real token."""
        if self.padding_side == "right":
            return torch.zeros_like(self.seq_lengths)
        return self.padded_length - self.seq_lengths

    def indices(self, policy: PositionPolicy, offset: int = 0) -> tuple[Tensor, Tensor]:
        """(rows, positions): 1-D long tensors of the absolute [batch, pos] cells of `policy`.

        - last_prompt: the last prompt token of each row (one cell per row).
        - last_token: the last real token of each row (one cell per row).
        - continuation: every continuation token (none for a row without continuation).
        - response: the last prompt token and every continuation token: the positions whose
          outputs predict the continuation (in generation: the prefill's last token, whose
          output is the first new token, and every generated token). A method that steers
          an answer edits these, or a one-token answer could never change.
        - all: every real (non-pad) token.

        `offset` (<= 0, one-cell policies only) moves the cell left, e.g. -1 reads the token
        before the last one (CAA reads the answer letter before a closing parenthesis).
        """
        starts = self.starts()
        rows = torch.arange(self.batch_size)
        if offset and policy not in ("last_prompt", "last_token"):
            raise ValueError(f"offset applies to last_prompt/last_token, not {policy!r}")
        if offset > 0:
            raise ValueError(f"offset must be <= 0 (towards the row start), got {offset}")
        if policy in ("last_prompt", "last_token"):
            length = self.prompt_lengths if policy == "last_prompt" else self.seq_lengths
            pos = starts + length - 1 + offset
            if bool((pos < starts).any()):
                raise ValueError(
                    f"offset {offset} reaches before the start of a row of "
                    f"{length.min().item()} tokens; use a smaller |offset|"
                )
            return rows, pos
        if policy in ("continuation", "response", "all"):
            mask = self.mask(policy)
            r, p = mask.nonzero(as_tuple=True)
            return r, p
        raise ValueError(f"unknown position policy {policy!r}; use one of {list(POLICIES)}")

    def mask(self, policy: PositionPolicy) -> Tensor:
        """[batch, padded_length] bool mask of the cells of `policy`."""
        pos = torch.arange(self.padded_length).unsqueeze(0)  # [1, pos]
        relative = pos - self.starts().unsqueeze(1)  # [batch, pos]: index within the row
        return policy_mask(
            policy,
            relative,
            self.prompt_lengths.unsqueeze(1),
            self.seq_lengths.unsqueeze(1),
        )


def policy_mask(
    policy: PositionPolicy, positions: Tensor, prompt_lengths: Tensor, seq_lengths: Tensor
) -> Tensor:
    """Which tokens `policy` covers, given each token's index within its own sequence.

    `positions`, `prompt_lengths` and `seq_lengths` broadcast together: a padded batch passes
    [batch, pos] indices relative to each row's first real token (`BatchLayout.mask`); a
    serving engine's flattened batch passes one entry per scheduled token (`sadi.vllm`).
    A token at index p of a sequence of `seq_length` real tokens whose first
    `prompt_length` are the prompt is covered by:

    - all: 0 <= p < seq_length;
    - response: prompt_length - 1 <= p < seq_length;
    - continuation: prompt_length <= p < seq_length;
    - last_prompt: p == prompt_length - 1;
    - last_token: p == seq_length - 1.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown position policy {policy!r}; use one of {list(POLICIES)}")
    if policy == "last_prompt":
        return positions == prompt_lengths - 1
    if policy == "last_token":
        return positions == seq_lengths - 1
    lo = {"all": torch.zeros_like(prompt_lengths), "continuation": prompt_lengths}.get(
        policy, prompt_lengths - 1
    )
    return (positions >= lo) & (positions >= 0) & (positions < seq_lengths)


# Where a method that steers an answer edits a scored row (ITI, CAA): "response" (from the
# last prompt token on) or "all" (every real token, as lm-eval's built-in `steered` model).
AnswerPositions = Literal["response", "all"]
ANSWER_POSITIONS: tuple[str, ...] = get_args(AnswerPositions)


def read_offset(value: object) -> int:
    """A read position counted back from a row's last token: 0 (the last), -1, ... (a
    method's `read_offset`)."""
    if isinstance(value, bool) or not isinstance(value, int) or value > 0:
        raise ValueError(
            f"read_offset must be an integer <= 0 (0 = last token, -1 = the one before), "
            f"got {value!r}"
        )
    return value


def answer_positions(value: str) -> AnswerPositions:
    """Check an answer-steering position setting; returns it.

    "continuation" was this option's name before it included the last prompt token (it
    edited continuation tokens only, so no one-token answer could change); it is accepted
    for saved steerers and old configs and read as "response", with a warning.
    """
    if value == "continuation":
        warnings.warn(
            "positions='continuation' is read as 'response': the last prompt token, whose "
            "output predicts the first answer token, is edited too (as in generation); "
            "write positions=response",
            UserWarning,
            stacklevel=3,
        )
        return "response"
    if value not in ANSWER_POSITIONS:
        raise ValueError(
            f"positions must be one of {list(ANSWER_POSITIONS)}, got {value!r}; 'response' "
            "edits the last prompt token and every continuation (and generated) token, "
            "'all' every real token"
        )
    return value  # type: ignore[return-value]
