"""Which card each what-if GPU of `--gpus` is: named (--gpu-name, one for all or one per GPU), the same card as
the first, or the card its size suggests, said out loud: its speed decides the predicted time."""

from __future__ import annotations

from typing import Callable, Optional

Card = tuple[Optional[str], Optional[tuple[int, int]]]  # (name, compute capability), as planner.probe.with_gpus takes


def each_gpu(text: Optional[str], count: int, option: str) -> tuple[Optional[str], ...]:
    """An option's value for each of `count` GPUs: none, one for all, or one per GPU ('RTX 4090,RTX 3060')."""
    from lowvram.errors import UserError

    if text is None:
        return (None,) * count
    values = tuple(v.strip() for v in text.split(","))
    if len(values) == 1:
        return values * count
    if len(values) != count or not all(values):
        raise UserError(f"{option} {text}: give one value for every GPU of --gpus ({count}), comma-separated, "
                        "or one value for all of them.")
    return values


def assumed_card(vram_gib: float, cc: Optional[tuple[int, int]], say: Callable[[str], None], given: str,
                 label: str = "what-if GPU") -> Optional[Card]:
    """The card a what-if GPU given only by its VRAM most likely is, said out loud; None: smaller than any card in
    the table (timed as the slowest one). Raises UserError where no card of that size is known."""
    from lowvram.errors import UserError
    from planner.timing import GPU_CARDS, infer_gpu

    card = infer_gpu(vram_gib, cc)
    if card is None and vram_gib < min(gib for _, gib, _ in GPU_CARDS):  # a small old card: as slow as the slowest
        say(f"{label}: no card of {vram_gib:g} GB in lowvram's table; its time is predicted as for the slowest one "
            "(an RTX 3060); --gpu-name NAME --compute-capability X.Y plan for a named card")
        return None
    if card is None:
        cc_text = f" and compute capability {cc[0]}.{cc[1]}" if cc else ""
        raise UserError(
            f"{given}{cc_text}: which GPU is it? No common card matches, and its speed decides the predicted "
            'time. Name it with --gpu-name (e.g. --gpu-name "RTX 4090" or "A100") and give --compute-capability.'
        )
    given += f" --compute-capability {cc[0]}.{cc[1]}" if cc else ""
    say(f"{label}: assuming an {card.name} ({card.memory_gib} GB, compute capability {card.compute_capability[0]}."
        f"{card.compute_capability[1]}, {card.tflops:g} TFLOP/s bf16) from {given}; --gpu-name NAME "
        "--compute-capability X.Y plan for another card")
    return f"{card.name} (assumed)", card.compute_capability


def other_cards(probe, sizes: tuple[float, ...], names: tuple[Optional[str], ...], ccs: tuple[Optional[str], ...],
                say: Callable[[str], None]) -> tuple[Card, ...]:
    """Each what-if GPU's card, the first being `probe`'s: a GPU given the first's name, compute capability and size
    is the first's card; one given a name is that card; one given only a size is the card that size suggests."""
    from lowvram.profiles.apply import parse_compute_capability
    from planner.timing import known_compute_capability

    first: Card = (probe.gpu_name, probe.compute_capability)
    cards = [first]
    for i, (size, name, cc_text) in enumerate(zip(sizes[1:], names[1:], ccs[1:]), 1):
        cc = parse_compute_capability(cc_text, "--compute-capability") if cc_text else None
        label = f"what-if GPU cuda:{i}"
        if (name, cc_text) == (names[0], ccs[0]) and (name is not None or size == sizes[0]):
            if name is None:
                say(f"{label}: the same card as cuda:0 ({first[0]}), of the same size; --gpu-name NAME,NAME names each")
            cards.append(first)
        elif name is not None:
            cards.append((name, cc or known_compute_capability(name) or (8, 6)))
        else:
            cards.append(assumed_card(size, cc, say, f"--gpus (cuda:{i}, a {size:g} GB GPU)", label)
                         or ("what-if GPU", cc or (8, 6)))
    return tuple(cards)
