"""Teachers: a deep ensemble, an MC-dropout network or one network -> `TeacherSignals`.

Every teacher is a frozen `nn.Module` (parameters without gradient, always in eval mode)
with one entry point, `signals(images, needs)`, which runs under `torch.no_grad` and
computes only the statistics named in `needs` (a subset of `SIGNAL_NAMES`).

The three teachers share one accumulator, `SignalAccumulator`, fed one forward pass at a
time (an ensemble member, or one MC-dropout sample). It keeps a Welford running mean and
sum of squared deviations of the softmax probabilities in float32. The std of
probabilities near 0 or 1 then escapes the catastrophic cancellation of `E[p^2] - E[p]^2`
(which in float32 errs by ~sqrt(eps) = 2e-4): it stays within half an ulp of the float32
probabilities themselves, without the memory of float64 maps. The N probability maps are
never stacked: peak memory is about five `[B, C, H, W]` float32 maps (mean, sum of squared
deviations, one pass's logits, its probabilities, one temporary) whatever N, as
`benchmarks/teacher_memory.py` measures.

Statistics (N passes with probabilities p_1..p_N, mean m, `[B, C, H, W]`):

- `mean_probs`: m (Holder & Shafique eq. 3, M).
- `std`: per-class std over passes (Holder eq. 3, Sigma): population std (divide by N) by
  default, `unbiased_std=True` divides by N - 1.
- `pred_std`: the std of the probability of the class that m predicts (DUDES: "the standard
  deviation of the softmax probabilities of the predicted class").
- `variance`: the mean over classes of the per-class variance, `[B, 1, H, W]`. NfS-SegNet
  (U-KD, eq. 3) thresholds a "pixelwise variance" of K MC-dropout samples at its median,
  following Kendall et al.'s Bayesian SegNet, whose model uncertainty is the per-class
  variance of the samples averaged over classes; the binarisation belongs to the U-KD
  method, the teacher gives the continuous map. Same divisor as `std`.
- `entropy`: predictive entropy H(m) in nats.
- `mutual_info`: H(m) - mean_i H(p_i) (BALD), clamped at 0 against rounding.
- `logits`: `Single` gives the network's own logits; `Ensemble` and `MCDropout` give
  log(m), clamped at the smallest normal float32 so it stays finite. Those are valid
  logits: softmax(log m) = m, so a KD loss applied to them sees the ensemble mean.
- `features`: the taps (`SegOutput.features`) of the first ensemble member, of the single
  network, or of the MC-dropout network with dropout off.

Input normalisation: teachers are segdistill segmenters trained on the project's inputs
(ImageNet mean/std, `segdistill.data.transforms`), so the batch given to the student is
given to the teacher unchanged; no conversion happens here.

Devices: move a teacher with `.to(device)` and pass images on that device; an ensemble
runs its members one after another on it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from segdistill.checkpoints import load_segmenter
from segdistill.defaults import DEFAULT_MC_SAMPLES
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import MCDropout as MCDropoutLayer
from segdistill.models.encoders import lookup
from segdistill.outputs import SIGNAL_NAMES, SegOutput, TeacherSignals

# An ensemble directory's list of members (`segdistill.ensemble` writes it).
MANIFEST_FILE = "manifest.json"
# Signals that need the running sum of squared deviations (the per-class variance).
_SPREAD_SIGNALS = frozenset({"std", "pred_std", "variance"})
# Signals that measure how the passes disagree: zero everywhere for a single pass.
DISAGREEMENT_SIGNALS = _SPREAD_SIGNALS | {"mutual_info"}


def check_needs(needs: Collection[str]) -> frozenset[str]:
    """`needs` as a frozenset, or a ValueError naming the names not in `SIGNAL_NAMES`."""
    if isinstance(needs, str):
        raise ValueError(f"needs must be a set of signal names, not the string {needs!r}")
    unknown = sorted(set(needs) - SIGNAL_NAMES)
    if unknown:
        raise ValueError(
            f"unknown teacher signal(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(SIGNAL_NAMES))}"
        )
    return frozenset(needs)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy in nats over the class axis: probs [B, C, H, W] -> [B, 1, H, W].

    `special.entr` is -p log p with the limit 0 at p = 0, so saturated softmax outputs give
    no NaN.
    """
    return torch.special.entr(probs).sum(dim=1, keepdim=True)


def welford_update(mean: Tensor, m2: Tensor | None, probs: Tensor, count: int) -> None:
    """Add the `count`-th sample `probs` to the running `mean` and `m2`, in place.

    mean, m2, probs: [B, C, H, W]; m2 (sum of squared deviations from the mean) may be None
    when no spread is needed. `probs` is overwritten (it is reused as scratch memory, which
    keeps the update at one temporary map).
    """
    if m2 is None:
        mean.add_(probs.sub_(mean), alpha=1.0 / count)
        return
    delta = probs - mean
    mean.add_(delta, alpha=1.0 / count)
    # delta * (p - new mean): the two factors share a sign, so m2 never goes negative.
    m2.addcmul_(delta, probs.sub_(mean))


class SignalAccumulator:
    """Turns forward passes, added one at a time, into the `TeacherSignals` in `needs`.

    Holds at most: mean and m2 ([B, C, H, W] float32 each), the sum of member entropies
    ([B, 1, H, W]), and the first pass's logits / features when those are asked for.
    """

    def __init__(
        self, needs: Collection[str], *, unbiased_std: bool = False, raw_logits: bool = False
    ) -> None:
        """needs: signal names; unbiased_std: divide the variance by N - 1 instead of N;
        raw_logits: `logits` is the first pass's logits (a single network) rather than the
        log of the mean probabilities (ensembles)."""
        self.needs = check_needs(needs)
        self.unbiased_std = unbiased_std
        self.raw_logits = raw_logits
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None
        self.entropy_sum: Tensor | None = None
        self.first_logits: Tensor | None = None
        self.features: dict[str, Tensor] = {}

    def add(self, output: SegOutput) -> None:
        """Add one forward pass (logits [B, C, H, W], any dtype; statistics in float32)."""
        if self.count == 0:
            if self.raw_logits and "logits" in self.needs:
                self.first_logits = output.logits
            if "features" in self.needs:
                self.features = dict(output.features)
        probs = torch.softmax(output.logits.float(), dim=1)
        self.count += 1
        if self.mean is None:
            self.mean = torch.zeros_like(probs)
            if self.needs & _SPREAD_SIGNALS:
                self.m2 = torch.zeros_like(probs)
            if "mutual_info" in self.needs:
                self.entropy_sum = probs.new_zeros(probs.shape[0], 1, *probs.shape[2:])
        elif probs.shape != self.mean.shape:
            raise ValueError(
                f"forward pass {self.count} gives probabilities of shape {tuple(probs.shape)}, "
                f"the first gave {tuple(self.mean.shape)}; teacher members must give maps "
                "of one shape (the same classes at the same output size)"
            )
        if self.entropy_sum is not None:
            self.entropy_sum += predictive_entropy(probs)
        welford_update(self.mean, self.m2, probs, self.count)

    def result(self) -> TeacherSignals:
        """The signals asked for; the others are None. Consumes the running state."""
        if self.mean is None:
            raise ValueError("no forward pass was added to the accumulator")
        needs, mean = self.needs, self.mean
        signals = TeacherSignals(features=self.features)
        if "mean_probs" in needs:
            signals.mean_probs = mean
        if self.m2 is not None:
            divisor = self.count - 1 if self.unbiased_std else self.count
            if divisor == 0:
                raise ValueError("the unbiased std needs at least two forward passes")
            var = self.m2.div_(divisor)  # in place: m2 is not needed after this
            if "variance" in needs:
                signals.variance = var.mean(dim=1, keepdim=True)
            if "pred_std" in needs:
                signals.pred_std = var.gather(1, mean.argmax(dim=1, keepdim=True)).sqrt_()
            if "std" in needs:
                signals.std = var.sqrt_()
        if needs & {"entropy", "mutual_info"}:
            entropy = predictive_entropy(mean)
            if "entropy" in needs:
                signals.entropy = entropy
            if "mutual_info" in needs:
                assert self.entropy_sum is not None  # add() sums it when mutual_info is needed
                expected = self.entropy_sum / self.count
                signals.mutual_info = (entropy - expected).clamp_(min=0.0)
        if "logits" in needs:
            signals.logits = (
                self.first_logits
                if self.raw_logits
                else mean.clamp(min=torch.finfo(mean.dtype).tiny).log()
            )
        return signals


def accumulate_signals(
    passes: Iterable[SegOutput],
    needs: Collection[str],
    *,
    unbiased_std: bool = False,
    raw_logits: bool = False,
) -> TeacherSignals:
    """Stream forward passes through a `SignalAccumulator` and return its signals.

    `passes` should be lazy (a generator calling one network at a time) so that only one
    pass's outputs are alive at once.
    """
    accumulator = SignalAccumulator(needs, unbiased_std=unbiased_std, raw_logits=raw_logits)
    for output in passes:
        accumulator.add(output)
        # Release this pass's logits and feature taps before the next pass runs; otherwise
        # the loop variable keeps them alive through the next network's forward.
        del output
    return accumulator.result()


def _freeze(module: nn.Module) -> None:
    module.requires_grad_(False)
    module.eval()


class Teacher(nn.Module, ABC):
    """A frozen network (or set of networks) giving `TeacherSignals`.

    `train()` is a no-op that keeps eval mode: a Lightning module holding the teacher as a
    submodule switches all its children to train mode each epoch, which would make
    batch-norm layers update their statistics and dropout fire.
    """

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def signals(self, images: Tensor, needs: Collection[str]) -> TeacherSignals:
        """images [B, 3, H, W] (ImageNet-normalised, on the teacher's device) -> the signals
        named in `needs`, each [B, C, H, W] or [B, 1, H, W] (see `TeacherSignals`)."""
        needs = check_needs(needs)
        with torch.no_grad():
            return self._signals(images, needs)

    @abstractmethod
    def _signals(self, images: Tensor, needs: frozenset[str]) -> TeacherSignals:
        """The signals for validated `needs`; called under no_grad."""

    @property
    @abstractmethod
    def passes(self) -> int:
        """Forward passes behind one signal: members, MC-dropout samples, or 1. With one,
        the `DISAGREEMENT_SIGNALS` are zero everywhere."""


def member_weights(path: str | Path) -> list[Path]:
    """The member weights files an ensemble manifest lists.

    path: the manifest file or the directory holding it. The manifest is
    `{"planned_members": N, "members": [{"checkpoint":
    "member_00/checkpoints/best.safetensors", ...}, ...]}` with checkpoint paths relative
    to the manifest's directory. An unfinished ensemble (fewer members than planned: one
    stopped, or members of a SLURM array still training) is a CheckpointError, not a
    smaller teacher used without a word.
    """
    manifest_path = Path(path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as error:
        raise CheckpointError(f"ensemble manifest {manifest_path} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"ensemble manifest {manifest_path} is not JSON ({error}); an ensemble is "
            f"its directory or {MANIFEST_FILE}, a single network's weights are teacher "
            "kind 'single' (or 'mc_dropout')"
        ) from error
    members = manifest.get("members") if isinstance(manifest, dict) else None
    if (
        not isinstance(members, list)
        or not members
        or not all(
            isinstance(m, dict) and isinstance(m.get("checkpoint"), str) and m["checkpoint"]
            for m in members
        )
    ):
        raise CheckpointError(
            f"ensemble manifest {manifest_path} needs a non-empty 'members' list of "
            "{'checkpoint': PATH} entries"
        )
    planned = manifest.get("planned_members")
    folder = manifest_path.parent
    if isinstance(planned, int) and planned > len(members):
        count = len(members)
        names = [member.get("name") for member in members]
        # `--members K` keeps member_00 .. member_{K-1}: the finished ones only if they are
        # those (it would train the first ones missing).
        if names == [f"member_{index:02d}" for index in range(count)]:
            keep = f", or keep the {count} with `... --members {count}`"
        elif all(isinstance(name, str) for name in names):
            keep = f" (finished: {', '.join(names)})"
        else:
            keep = ""
        raise CheckpointError(
            f"ensemble {folder} is unfinished: {count} of its {planned} planned "
            f"members are trained ({MANIFEST_FILE}). Finish it with `segdistill ensemble "
            f"CONFIG --run-dir {folder}` (finished members are skipped){keep}"
        )
    if isinstance(planned, int) and planned < len(members):
        raise CheckpointError(
            f"ensemble manifest {manifest_path} lists {len(members)} members but plans "
            f"{planned}: write it again with `segdistill ensemble CONFIG --run-dir {folder} "
            "--members N`"
        )
    return [manifest_path.parent / member["checkpoint"] for member in members]


class Ensemble(Teacher):
    """A deep ensemble: members run one after another, statistics accumulate per member."""

    def __init__(self, members: Sequence[nn.Module], unbiased_std: bool = False) -> None:
        """members: segmenters returning `SegOutput` with the same number of classes;
        unbiased_std: std and variance divide by N - 1 (default N, Holder eq. 3)."""
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        if unbiased_std and len(members) < 2:
            raise ConfigError("the unbiased std needs an ensemble of at least two members")
        classes = [getattr(member, "num_classes", None) for member in members]
        if len({count for count in classes if count is not None}) > 1:
            raise ConfigError(
                f"the ensemble's members predict different numbers of classes: {classes}"
            )
        self.members = nn.ModuleList(members)
        self.unbiased_std = unbiased_std
        _freeze(self)

    @classmethod
    def from_manifest(cls, path: str | Path, unbiased_std: bool = False) -> Ensemble:
        """Load the members listed in `ENSEMBLE_DIR/manifest.json` (`member_weights`)."""
        return cls(
            [load_segmenter(weights)[0] for weights in member_weights(path)],
            unbiased_std=unbiased_std,
        )

    def _signals(self, images: Tensor, needs: frozenset[str]) -> TeacherSignals:
        # Features are the first member's taps: when nothing else is asked for (a cached
        # distillation whose online part reads only features), the other members need not run.
        members = self.members[:1] if needs == {"features"} else self.members
        return accumulate_signals(
            (member(images) for member in members), needs, unbiased_std=self.unbiased_std
        )

    @property
    def passes(self) -> int:
        return len(self.members)


def mc_dropout_layers(model: nn.Module) -> list[MCDropoutLayer]:
    """The layers MC dropout samples with, found by type: the segmenter's `MCDropout` at
    its lowest-resolution levels (`model.mc_dropout`). Ordinary training dropout (ASPP's
    0.5, PSPNet's and the heads' 0.1) is another type and stays off, as at any inference."""
    return [module for module in model.modules() if isinstance(module, MCDropoutLayer)]


@contextmanager
def _dropout_sampling(model: nn.Module) -> Iterator[None]:
    """Switch the MC-dropout layers of `model` to train mode, the rest untouched (batch norm
    keeps its running statistics), and restore their modes afterwards."""
    dropouts = mc_dropout_layers(model)
    modes = [module.training for module in dropouts]
    try:
        for module in dropouts:
            module.train(True)
        yield
    finally:
        for module, mode in zip(dropouts, modes):
            module.train(mode)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with the RNG of `device` seeded to `seed`, restoring the global RNG
    state afterwards so the teacher's sampling does not shift the training run's."""
    if seed is None:
        yield
        return
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda_devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


class MCDropout(Teacher):
    """An MC-dropout network (NfS-SegNet's teacher): K forward passes with dropout on.

    The network's MC-dropout layers sit at its lowest-resolution levels (the segmenter's
    `model.mc_dropout` option); NfS-SegNet drops 1% at the six most compressed layers and
    uses K = 5 samples ("MC-dropout with 5 minibatch"). During `signals` only those layers
    (`mc_dropout_layers`, found by type) are in train mode; everything else, batch norm and
    ordinary training dropout included, stays in eval mode, and the modes are restored
    afterwards. With a `seed`, every call reseeds the RNG (and restores the global RNG
    after), so the same batch always gives the same signals; without one the global RNG
    is used and advanced.
    """

    def __init__(
        self,
        model: nn.Module,
        samples: int = DEFAULT_MC_SAMPLES,
        seed: int | None = None,
        unbiased_std: bool = False,
    ) -> None:
        """model: a segmenter with at least one MC-dropout layer; samples: K >= 2 passes;
        seed: see the class docstring; unbiased_std: as for `Ensemble`."""
        super().__init__()
        # Its uncertainty is the spread of the passes: one pass has none (std 0 everywhere).
        if samples < 2:
            raise ConfigError(
                f"MC dropout needs samples >= 2 (its std is 0 from one), got {samples}"
            )
        if not mc_dropout_layers(model):
            raise ConfigError(
                "the MC-dropout teacher has no MC-dropout layer (segdistill.models.MCDropout); "
                "train it with model.mc_dropout > 0"
            )
        self.model = model
        self.samples = samples
        self.seed = seed
        self.unbiased_std = unbiased_std
        _freeze(self)

    @classmethod
    def from_checkpoint(cls, path: str | Path, samples: int = DEFAULT_MC_SAMPLES) -> MCDropout:
        """Load a segmenter checkpoint (safetensors) as an MC-dropout teacher."""
        return cls(load_segmenter(Path(path))[0], samples=samples)

    def _signals(self, images: Tensor, needs: frozenset[str]) -> TeacherSignals:
        # Taps come from a deterministic pass (dropout off), the network as trained, at the
        # cost of one more forward when they are asked for.
        deterministic = self.model(images) if "features" in needs else None
        sampled = needs - {"features"}
        if deterministic is not None and not sampled:
            # Taps alone (a cached distillation's online part, the translator's training):
            # the K sampling passes would be thrown away, as an Ensemble's other members.
            return accumulate_signals(iter([deterministic]), needs)
        with _dropout_sampling(self.model), _seeded(self.seed, images.device):
            signals = accumulate_signals(
                (self.model(images) for _ in range(self.samples)),
                sampled,
                unbiased_std=self.unbiased_std,
            )
        signals.features = deterministic.features if deterministic is not None else {}
        return signals

    @property
    def passes(self) -> int:
        return self.samples


class Single(Teacher):
    """One network as teacher: its probabilities, entropy and logits; its spread signals
    (std, pred_std, variance, mutual_info) are zero, since one pass has no disagreement."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        _freeze(self)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Single:
        """Load a segmenter checkpoint (safetensors) as a single teacher."""
        return cls(load_segmenter(Path(path))[0])

    def _signals(self, images: Tensor, needs: frozenset[str]) -> TeacherSignals:
        return accumulate_signals([self.model(images)], needs, raw_logits=True)

    @property
    def passes(self) -> int:
        return 1


# Teacher kind (config `distill.teacher.kind`) -> builder(path, samples).
TEACHER_BUILDERS: dict[str, Callable[[Path, int], Teacher]] = {
    "ensemble": lambda path, samples: Ensemble.from_manifest(path),
    "mc_dropout": lambda path, samples: MCDropout.from_checkpoint(path, samples),
    "single": lambda path, samples: Single.from_checkpoint(path),
}


def build_teacher(kind: str, path: str | Path, samples: int = DEFAULT_MC_SAMPLES) -> Teacher:
    """The teacher of `kind` loaded from `path`: an ensemble directory (or its
    manifest.json) for "ensemble", a segmenter checkpoint for "mc_dropout" and "single".
    `samples` is the number of MC-dropout passes (ignored by the other kinds)."""
    return lookup(TEACHER_BUILDERS, kind, "teacher kind")(Path(path), samples)
