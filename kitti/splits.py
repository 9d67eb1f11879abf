"""The honest-estimate protocol: train / select / report, and where a reported figure's images came from.

Each category's frames, sorted by name, are cut into three contiguous blocks [train | select | report].
Neighbouring KITTI frames are near-duplicates, so blocks (not random picks) keep the report images away from
everything trained on: the report block touches only the select block. Training picks its best epoch (and a
person picks a recipe) on `select`; `report` is scored once at the end and is never used to choose anything,
so its figure estimates accuracy on unseen frames. The report block is the old two-way split's val block, so
earlier checkpoints selected on val are flagged as optimistic there.
"""

from __future__ import annotations

from kitti.data import CATEGORIES, DataError, KittiSample

SCHEME = "train/select/report"
PARTS = ("train", "select", "report")
DEFAULT_REPORT_FRACTION = 0.2
DEFAULT_SELECT_FRACTION = 0.15
# selected_on of a model that nothing chose (train --keep last): the schedule's length was fixed beforehand
LAST_EPOCH = "none (last epoch of a fixed schedule)"


def three_way_split(samples: list[KittiSample], report_fraction: float = DEFAULT_REPORT_FRACTION,
                    select_fraction: float = DEFAULT_SELECT_FRACTION) -> dict[str, list[KittiSample]]:
    """{train, select, report}: per category, contiguous blocks in name order, report last.

    select_fraction 0 gives an empty select part (the caller then selects on report, and must say so).
    """
    if not 0 <= select_fraction < 1 or not 0 <= report_fraction < 1 or select_fraction + report_fraction >= 1:
        raise DataError(f"split fractions select {select_fraction} + report {report_fraction}: "
                        "each in [0, 1) and together below 1")
    parts: dict[str, list[KittiSample]] = {part: [] for part in PARTS}
    for category in CATEGORIES:
        members = sorted((s for s in samples if s.category == category), key=lambda s: s.name)
        if len(members) < 3:  # too few to cut: everything trains (tiny synthetic sets)
            parts["train"] += members
            continue
        n_report = int(round(len(members) * report_fraction))
        n_select = int(round(len(members) * select_fraction))
        n_train = len(members) - n_report - n_select
        parts["train"] += members[:n_train]
        parts["select"] += members[n_train : n_train + n_select]
        parts["report"] += members[n_train + n_select :]
    if not parts["train"]:
        raise DataError("the train part of the split is empty")
    return parts


def split_record(parts: dict[str, list[KittiSample]], selected_on: str) -> dict:
    """What a checkpoint's summary keeps so any later evaluation can say which images it has seen."""
    return {"scheme": SCHEME, "selected_on": selected_on,
            **{part: sorted(s.name for s in members) for part, members in parts.items()}}


def checked_summary(summary: object, source: str) -> dict | None:
    """A model's training summary is untrusted input: its split record must be lists of image names and its
    val_fraction a fraction, or DataError names the file and the field."""
    if not isinstance(summary, dict):
        return None
    split = summary.get("split")
    if split is not None:
        if not isinstance(split, dict):
            raise DataError(f"{source}: recorded training split 'summary.split' is not a mapping")
        if split and "scheme" not in split:  # provenance names the scheme in every verdict
            raise DataError(f"{source}: recorded training split has no 'summary.split.scheme'")
        for key, value in split.items():
            if key in ("scheme", "selected_on"):
                if not isinstance(value, str):
                    raise DataError(f"{source}: 'summary.split.{key}' must be a string")
            elif not isinstance(value, list) or not all(isinstance(name, str) for name in value):
                raise DataError(f"{source}: 'summary.split.{str(key)[:40]}' must be a list of image names")
    fraction = summary.get("val_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction < 1):
        raise DataError(f"{source}: 'summary.val_fraction' must be a number between 0 and 1")
    return summary


def legacy_record(summary: dict, samples: list[KittiSample]) -> dict | None:
    """The split of a checkpoint trained before splits were recorded: train / val by val_fraction, val selected."""
    if "val_fraction" not in summary:
        return None
    from kitti.data import split_samples

    fraction = float(summary["val_fraction"])
    return {"scheme": f"train/val (val_fraction {fraction}, reconstructed)", "selected_on": "val",
            "train": sorted(s.name for s in split_samples(samples, "train", fraction)),
            "val": sorted(s.name for s in split_samples(samples, "val", fraction))}


def provenance(summary: dict | None, evaluated: list[KittiSample], all_samples: list[KittiSample]) -> dict:
    """Whether the evaluated images were trained on or used for selection, from the model's own summary."""
    names = {s.name for s in evaluated}
    record = (summary or {}).get("split") or legacy_record(summary or {}, all_samples)
    if record is None:
        return {"verdict": "unknown", "line": "provenance unknown: the model records no training split "
                "(an ONNX/engine without roadseg.training metadata, or a foreign checkpoint)"}
    trained = sorted(names & set(record.get("train", [])))
    selected_part = record.get("selected_on")
    selected = sorted(names & set(record.get(selected_part, []))) if selected_part else []
    if trained:
        verdict = "trained-on"
        line = (f"NOT an honest estimate: {len(trained)} of {len(names)} images were in the training set "
                f"({record['scheme']})")
    elif selected:
        verdict = "selection-biased"
        line = (f"OPTIMISTIC: {len(selected)} of {len(names)} images chose the model (best epoch on "
                f"'{selected_part}', {record['scheme']}); not an honest estimate")
    else:
        verdict = "honest"
        chosen_by = "nothing chose the epoch: the last of a fixed schedule" if selected_part == LAST_EPOCH \
            else f"selection on '{selected_part}'"
        line = (f"honest: none of these {len(names)} images was trained on or used to choose the model "
                f"({record['scheme']}, {chosen_by})")
    return {"verdict": verdict, "line": line, "scheme": record["scheme"], "selected_on": selected_part,
            "trained_on": len(trained), "used_for_selection": len(selected), "images": len(names)}
