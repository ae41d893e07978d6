"""Open-set decisions whose promise holds at any gallery size.

A per-pair threshold promises a false accept rate per comparison, but a search compares a
stranger with every gallery face, so the more faces a gallery holds, the more strangers see
a "match". Users care about the share of searches by people who are not in the gallery that
name someone: the false positive identification rate (FPIR, as NIST FRVT 1:N measures it).

`trainer calibrate` measures, on identities no model trained or chose on, every stranger
pair's distance and how near each probe sits to strangers in general (its "shift": some
faces are near everyone). From those, `GalleryCalibration` answers, for a gallery of F
faces of M individuals:

    FPIR(d) = mean over probe shifts s of  1 - (1 - FAR(d - s)) ** n_eff(M, F),
    n_eff(M, F) = alpha * M ** beta * (F / M) ** gamma

FAR is the share of stranger pairs at or under a distance once each pair is seen from its
probe's shift; n_eff is how many independent strangers a gallery is worth (a stranger near
one photo of someone is near their others too, but each more photo is another chance);
alpha, beta and gamma are fitted on galleries drawn from the calibration identities, some
with one photo per individual and some with several. The stored FAR curve reaches down to
pairs seen ten times among millions; below it, log FAR is extrapolated linearly in distance
from its measured low end.

The decision rule (README, "Decisions"): a probe face is answered by its nearest gallery
face when that face's distance passes the threshold for the gallery's size and the FPIR
asked for (default 4%, so that at most 5% hold on new people); every gallery face that
passes it is a "match". Strength wording
follows the same numbers: "confident" where the stranger rate is at most a tenth of the
FPIR asked for, "possible" up to it, "no match" beyond.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ModelError

# What the default promises: at most this share of strangers' searches name someone.
FPIR_PROMISE = 0.05
# The FPIR a search asks for by default: aimed below the promise, because a calibration is
# right on average, so aimed at the promise itself it lets more through in about half of
# all galleries of people it never saw. bench/calibration_transfer.py measures that on the
# choose identities alone (calibrated on half of them, read on the other half) and picks
# the largest aim whose reads average at most 90% of the promise: 0.04 for `human` and `dog`.
DEFAULT_FPIR = 0.04
# A match is "confident" when strangers come as near this rarely, relative to the FPIR asked for.
CONFIDENT_SHARE = 0.1
# FAR levels the stored curve keeps (log-spaced), from one pair in ten million to all of them.
TAIL_FARS = np.logspace(-7, 0, 71)
# Per-pair false accept rates below this are extrapolation far past any measurement: refused.
MIN_SUPPORTED_FAR = 1e-10


def parse_fpir(value) -> float:
    """A target FPIR from a command line or a form, or a ModelError naming the allowed range."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_FPIR
    try:
        fpir = float(value)
    except (TypeError, ValueError):
        fpir = float("nan")
    if not 0.0 < fpir < 1.0:   # also refuses nan
        raise ModelError(f"fpir {value!r}: expected a share of stranger searches strictly between 0 and 1 "
                         f"(e.g. 0.05 for 5%)")
    return fpir


@dataclass(frozen=True)
class GalleryCalibration:
    """A model's stranger statistics (stored in its checkpoint under "open_set")."""

    distances: tuple[float, ...]   # ascending distances at which ...
    fars: tuple[float, ...]        # ... this share of (shift-corrected) stranger pairs is at or under them
    tail_slope: float              # d log10(FAR) / d distance below the measured curve
    shifts: tuple[float, ...]      # quantiles of the probes' shifts (how much nearer strangers they sit)
    alpha: float                   # n_eff(M, F) = alpha * M ** beta * (F / M) ** gamma
    beta: float
    pairs: int                     # stranger pairs measured
    data: str = ""                 # the identities it was measured on
    gamma: float = 0.0             # 0 in checkpoints calibrated before faces per individual counted

    @classmethod
    def from_dict(cls, stored: dict) -> "GalleryCalibration":
        return cls(tuple(stored["distances"]), tuple(stored["fars"]), float(stored["tail_slope"]),
                   tuple(stored["shifts"]), float(stored["alpha"]), float(stored["beta"]), int(stored["pairs"]),
                   str(stored.get("data", "")), float(stored.get("gamma", 0.0)))

    def to_dict(self) -> dict:
        return {"distances": list(self.distances), "fars": list(self.fars), "tail_slope": self.tail_slope,
                "shifts": list(self.shifts), "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
                "pairs": self.pairs, "data": self.data}

    def far_at(self, distance):
        """Share of (shift-corrected) stranger pairs at or under `distance` (a number or an
        array): measured, or extrapolated below the measured curve."""
        d, log_far = np.asarray(self.distances), np.log10(self.fars)
        distance = np.asarray(distance, dtype=np.float64)
        below = log_far[0] + self.tail_slope * (np.minimum(distance, d[0]) - d[0])
        return 10 ** np.where(distance < d[0], below, np.interp(distance, d, log_far))

    def effective_strangers(self, individuals: int, faces: int | None = None) -> float:
        """n_eff of a gallery of `faces` faces (default: one each) of `individuals` individuals."""
        individuals = max(individuals, 1)
        per_individual = max((faces or individuals) / individuals, 1.0)
        return max(1.0, self.alpha * individuals ** self.beta * per_individual ** self.gamma)

    def fpir_at(self, distance: float, individuals: int, faces: int | None = None) -> float:
        """Share of stranger searches whose nearest face, in a gallery of `faces` faces
        (default: one each) of this many individuals, is at most this far."""
        far = np.minimum(self.far_at(distance - np.asarray(self.shifts)), 1 - 1e-12)
        return float(np.mean(-np.expm1(self.effective_strangers(individuals, faces) * np.log1p(-far))))

    def threshold(self, fpir: float, individuals: int, faces: int | None = None) -> float:
        """The distance under which at most `fpir` of stranger searches see a face, in a
        gallery of `faces` faces (default: one each) of this many individuals."""
        per_pair = -math.expm1(math.log1p(-fpir) / self.effective_strangers(individuals, faces))
        if per_pair < MIN_SUPPORTED_FAR:
            raise ModelError(f"fpir {fpir:g} on a gallery of {individuals:,} individuals needs a per-pair false "
                             f"accept rate of {per_pair:.1e}, beyond what this model's calibration can support "
                             f"(down to {MIN_SUPPORTED_FAR:.0e}): ask for a larger fpir")
        floor = self.fpir_at(0.0, individuals, faces)
        if floor > fpir:
            # The faces that sit nearest everyone: with this many chances, their strangers
            # come within any distance at all, so no threshold keeps the promise.
            raise ModelError(f"fpir {fpir:g} on a gallery of {individuals:,} individuals cannot be reached with this "
                             f"model: even identical faces alone would leave {floor:.2g} of strangers' searches "
                             f"named; ask for more than {floor:.2g}")
        low, high = 0.0, 3.0            # fpir_at rises with distance: bisect
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (middle, high) if self.fpir_at(middle, individuals, faces) <= fpir else (low, middle)
        return low


def strength(stranger_rate: float, fpir: float) -> str:
    """The three-level wording of a gallery face's distance, from the same numbers as `match`."""
    if stranger_rate <= CONFIDENT_SHARE * fpir:
        return "confident"
    return "possible" if stranger_rate <= fpir else "no match"


@dataclass(frozen=True)
class MatchRule:
    """What decides `match` in one gallery: a distance threshold and the promise behind it.

    rule "fpir": the threshold for the FPIR asked for at the gallery's size; "per-pair": a
    threshold given as an operating point or a distance, or the strict point of a model
    calibrated before gallery statistics (then `fpir` is what it gives at this size, when known).
    """

    rule: str
    threshold: float
    fpir: float | None
    individuals: int
    faces: int
    calibration: GalleryCalibration | None = None
    operating_point: dict | None = None   # per-pair: {"name", "tar", "far"}
    message: str | None = None

    def judge(self, distance: float) -> dict:
        """{"match", "strength", "stranger_rate"} of one gallery face's distance: the share of
        stranger searches that would see a face this near, and its wording."""
        rate = (self.calibration.fpir_at(distance, self.individuals, self.faces)
                if self.calibration is not None else None)
        match = distance <= self.threshold
        if not match:
            wording = "no match"
        elif rate is None or self.fpir is None:
            wording = "possible"      # nothing to say how rare: a match, no more
        else:
            wording = strength(rate, self.fpir)
        return {"match": bool(match), "strength": wording,
                "stranger_rate": None if rate is None else float(f"{rate:.3g}")}

    def describe(self) -> dict:
        """The rule as JSON answers show it."""
        described = {"rule": self.rule, "threshold": self.threshold, "fpir": self.fpir,
                     "individuals": self.individuals, "faces": self.faces}
        if self.calibration is not None and self.fpir is not None:
            try:
                described["confident_within"] = self.calibration.threshold(CONFIDENT_SHARE * self.fpir,
                                                                           self.individuals, self.faces)
            except ModelError:      # a tenth of a tiny FPIR in a huge gallery: nothing is confident
                described["confident_within"] = 0.0
        if self.operating_point is not None:
            described["operating_point"] = self.operating_point
        if self.message:
            described["message"] = self.message
        return described
