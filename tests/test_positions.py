import pytest
import torch

from sadi.core.positions import BatchLayout


def layout(side: str) -> BatchLayout:
    return BatchLayout(
        seq_lengths=torch.tensor([5, 3, 6]),
        prompt_lengths=torch.tensor([2, 3, 4]),
        padded_length=6,
        padding_side=side,  # type: ignore[arg-type]
    )


def test_last_prompt_right_and_left() -> None:
    rows, pos = layout("right").indices("last_prompt")
    assert rows.tolist() == [0, 1, 2] and pos.tolist() == [1, 2, 3]
    rows, pos = layout("left").indices("last_prompt")
    # left padding shifts each row by padded_length - seq_length = [1, 3, 0]
    assert pos.tolist() == [2, 5, 3]


def test_last_token() -> None:
    assert layout("right").indices("last_token")[1].tolist() == [4, 2, 5]
    assert layout("left").indices("last_token")[1].tolist() == [5, 5, 5]


def test_continuation_and_all_masks() -> None:
    right = layout("right")
    assert right.mask("continuation").int().tolist() == [
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    left = layout("left")
    assert left.mask("all").int().tolist() == [
        [0, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
    ]
    assert left.mask("continuation").int().tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    rows, pos = left.indices("continuation")
    assert list(zip(rows.tolist(), pos.tolist())) == [(0, 3), (0, 4), (0, 5), (2, 4), (2, 5)]


def test_policies_agree_between_paddings() -> None:
    """The same cells, measured from each row's first real token, under both paddings."""
    for policy in ("last_prompt", "last_token", "continuation", "all"):
        r = layout("right")
        lft = layout("left")
        rr, rp = r.indices(policy)
        lr, lp = lft.indices(policy)
        assert rr.tolist() == lr.tolist()
        assert rp.tolist() == (lp - lft.starts()[lr]).tolist()


def test_from_attention_mask_detects_side() -> None:
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert BatchLayout.from_attention_mask(left).padding_side == "left"
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    lay = BatchLayout.from_attention_mask(right)
    assert lay.padding_side == "right"
    assert lay.indices("last_prompt")[1].tolist() == [1, 3]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt_lengths=torch.tensor([0, 1])), "prompt of >= 1"),
        (dict(prompt_lengths=torch.tensor([4, 1])), "exceed seq_lengths"),
        (dict(padded_length=2), "exceed padded_length"),
    ],
)
def test_bad_layouts(kwargs: dict, match: str) -> None:
    base = dict(
        seq_lengths=torch.tensor([3, 2]),
        prompt_lengths=torch.tensor([1, 1]),
        padded_length=3,
        padding_side="right",
    )
    with pytest.raises(ValueError, match=match):
        BatchLayout(**{**base, **kwargs})  # type: ignore[arg-type]


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown position policy 'middle'"):
        layout("right").indices("middle")  # type: ignore[arg-type]


def test_offset_moves_single_cells_left_and_is_checked() -> None:
    assert layout("left").indices("last_token", -1)[1].tolist() == [4, 4, 4]
    assert layout("right").indices("last_prompt", -1)[1].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="reaches before the start"):
        layout("right").indices("last_prompt", -2)
    with pytest.raises(ValueError, match="offset applies to"):
        layout("right").indices("all", -1)
