"""Which magnitude ratios a MagCache run uses: calibrated on this machine, else published, else none (exit 2)."""

from __future__ import annotations

from lowvram.caching.magcache.calibrate import list_calibrated, load_calibrated
from lowvram.caching.magcache.ratios import PUBLISHED
from lowvram.caching.magcache.schedule import MagCacheParams
from lowvram.errors import UserError

# Settings for calibrated models, which have no published ones: MagCache4Wan2.2's (its parser's K and
# retention ratio, and the threshold of its published runs), the conservative end of the published settings.
CALIBRATED_DEFAULTS = dict(threshold=0.06, max_skips=2, retention_ratio=0.2)


def published_key(identity, image_to_video: bool) -> str:
    """TI2V-5B has one array per mode (text- or image-to-video); the others one per model."""
    if identity.key == "wan2.2-ti2v-5b":
        return "wan2.2-ti2v-5b-i2v" if image_to_video else "wan2.2-ti2v-5b-t2v"
    return identity.key


def choose_ratios(identity, setting, image_to_video: bool, model: str = "") -> MagCacheParams:
    """The ratios and settings (K, retention ratio, default threshold) for a model identity, with their source."""
    mode = ("i2v" if identity.image_to_video else "t2v") if identity.two_experts else "single"
    calibrated = load_calibrated(identity.key)
    if calibrated is not None:
        defaults = dict(CALIBRATED_DEFAULTS)
        published = PUBLISHED.get(published_key(identity, image_to_video))
        if published is not None:  # a released model calibrated again keeps its published settings
            defaults = dict(threshold=published.threshold, max_skips=published.max_skips, retention_ratio=published.retention_ratio)
        source = (f"calibrated on this machine {calibrated.get('created', '')} from {calibrated.get('model') or identity.label}, "
                  f"{calibrated.get('steps')} steps ({calibrated['path']})")
        ratios = tuple(calibrated["ratios"])
        label = identity.label
    else:
        published = PUBLISHED.get(published_key(identity, image_to_video))
        if published is None:
            raise UserError(no_ratios_message(identity, model))
        defaults = dict(threshold=published.threshold, max_skips=published.max_skips, retention_ratio=published.retention_ratio)
        source = f"{published.label}'s published ratios ({published.source}); settings from {published.defaults_source}"
        ratios = published.ratios
        label = published.label
    return MagCacheParams(
        ratios=ratios,
        max_skips=setting.max_skips if setting.max_skips is not None else defaults["max_skips"],
        retention_ratio=setting.retention_ratio if setting.retention_ratio is not None else defaults["retention_ratio"],
        mode=mode,
        source=source,
        default_threshold=defaults["threshold"],
        label=label,
        note="" if identity.released or calibrated is not None else identity.reason,
    )


def no_ratios_message(identity, model: str = "") -> str:
    published = ", ".join(dict.fromkeys(r.label.split(" (")[0] for r in PUBLISHED.values()))
    mine = list_calibrated()
    calibrated = "; calibrated on this machine: " + ", ".join(f"{d.get('label') or d['key']}" for d in mine) if mine else \
        "; none calibrated on this machine yet"
    who = model or "MODEL"
    return (
        f"MagCache has no magnitude ratios for {identity.label} ({identity.reason}). Published ratios exist for: "
        f"{published}{calibrated}. Calibrate this model once (a normal run that computes every step and saves its "
        f"ratios for later runs): lowvram generate \"a prompt\" --model {who} --cache magcache --cache-calibrate"
    )
