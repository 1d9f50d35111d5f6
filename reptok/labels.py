"""Class labels of a class generator: names, coarser groups of names, and ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def resolve_class(
    label: int | str,
    *,
    class_names: Sequence[str],
    class_groups: Mapping[str, Sequence[str]],
    num_classes: int,
    generator: torch.Generator | None = None,
) -> int:
    """A class name, group name or id -> id, with a clear error for unknown ones (names are case
    blind). A group gives one of its member classes, drawn with `generator`."""
    if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
        lowered = {n.lower(): i for i, n in enumerate(class_names)}
        groups = {g.lower(): members for g, members in class_groups.items()}
        key = label.strip().lower()
        if key in lowered:
            return lowered[key]
        if key in groups:
            pick = int(torch.randint(len(groups[key]), (1,), generator=generator))
            return resolve_class(
                groups[key][pick], class_names=class_names, class_groups={}, num_classes=num_classes
            )
        known = [*class_groups, *class_names]
        raise ValueError(f"unknown class {label!r}; known: {', '.join(known) or '(none named)'}")
    idx = int(label)
    if not 0 <= idx < num_classes:
        raise ValueError(f"class id {idx} out of range 0..{num_classes - 1}")
    return idx
