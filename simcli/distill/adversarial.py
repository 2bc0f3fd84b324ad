"""Real data in a run (data.source): the images each micro-batch draws, and the settings of the adversarial term.

The term is SiDA's (Zhou et al., ICLR 2025; spec section `adversarial`): the online model's encoder is the
discriminator (simcli.nets: `return_logits`), trained beside its DSM loss to tell noised real images from noised
generator samples, and the generator is given the adversarial loss of its samples beside its SIM, SiD or
Diff-Instruct loss. Real images are noised with the fake batch's noise levels and noise (sida_loss.py:87-96) and
keep their own labels. With --method dmd2 the term is DMD2's instead (simcli.distill.dmd2). Each micro-batch draws
its real images from its own stream (IterationStreams.real_data), so the run stays the same for any number of
processes and on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simcli.config.spec import AdversarialSpec, NoiseSpec, RunSpec
from simcli.data.real_data import RealBatchStream, check_against_teacher, open_real_images
from simcli.distill.augment import AugmentPipe
from simcli.distill.streams import IterationStreams
from simcli.errors import UsageError
from simcli.teachers.registry import Teacher


@dataclass(frozen=True)
class RealData:
    """The run's real images and its adversarial settings."""

    stream: RealBatchStream
    label_dim: int
    """The teacher's classes: real labels are one-hot over them (None for an unconditional teacher)."""
    settings: AdversarialSpec
    style: str = "sida"
    """sida: SiDA's term, the online model's channel-mean logits of the DSM batch (this module); dmd2: DMD2's, a
    classifier head's logits of images noised afresh at levels of gan_noise (simcli.distill.dmd2)."""
    gan_noise: NoiseSpec | None = None
    """The noise levels of DMD2's GAN passes (the online step's: DMD2 draws from the whole grid)."""

    def draw(self, streams: IterationStreams, phase: int, micro_batch: int, n: int, device: torch.device,
             augment: AugmentPipe | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """n real images [n, C, H, W] in [-1, 1], their one-hot labels (None without classes) and the online model's
        extra inputs for a micro-batch: with `augment` (online.augment_p), the images augmented on their own, as
        SiDA augments real and fake images independently (sida_loss.py:85-96), and their augment labels."""
        rng = streams.real_data(phase, micro_batch)
        images, labels = self.stream.batch(rng, n, device, label_dim=self.label_dim or None)
        extra: dict[str, torch.Tensor] = {}
        if augment is not None:
            images, extra["augment_labels"] = augment(images, _on(rng, device))
        return images, labels if self.label_dim else None, extra

    def generator_frozen(self, images_seen: int) -> bool:
        """The generator does not step yet (adversarial.generator_freeze_kimg)."""
        return images_seen < self.settings.generator_freeze_kimg * 1000

    def generator_adversarial(self, images_seen: int) -> bool:
        """The generator's adversarial loss is on (adversarial.generator_start_kimg)."""
        return images_seen >= self.settings.generator_start_kimg * 1000


def _on(rng: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from the CPU stream `rng` (the augmentation draws on the images' device)."""
    if torch.device(device).type == "cpu":
        return rng
    seed = int(torch.randint(2**62, (1,), generator=rng).item())
    return torch.Generator(device=device).manual_seed(seed)


def open_run_data(spec: RunSpec, teacher: Teacher) -> RealData | None:
    """The run's real data (None when data-free), opened and checked against the teacher before the run directory
    is touched: a missing, empty or corrupt source, images of another size or channel count, a class-conditional
    teacher given unlabelled data, and teachers whose network has no discriminator are one-line UsageErrors."""
    source = spec.data.source
    if source is None:
        return None
    net = teacher.denoiser
    if len(net.sample_shape) != 3 or net.conditioning.takes_text:
        raise UsageError(f"--data gives real images to image teachers, not '{teacher.display_name}'",
                         hint="drop --data (text-to-image runs are distilled from prompts)")
    if not net.supports_discriminator:
        raise UsageError(f"the adversarial term of --data needs an EDM UNet teacher (its encoder is the "
                         f"discriminator); '{teacher.display_name}' has none", hint="drop --data")
    data = open_real_images(source)
    check_against_teacher(data, tuple(net.sample_shape), net.label_dim, teacher.display_name)
    dmd2 = spec.loss.method == "dmd2"
    return RealData(RealBatchStream(data), net.label_dim, spec.adversarial, "dmd2" if dmd2 else "sida",
                    spec.online.noise if dmd2 else None)


DMD2_WITHOUT_DATA = ("--method dmd2 without --data runs without DMD2's GAN term (its ablation 'w/o GAN'); give real "
                     "images with --data for the full method")


def schedule_warnings(real: RealData | None, total_images: int, method: str = "sim") -> list[str]:
    """What a run with real data should know of SiDA's schedule: a generator that never steps, or never sees the
    adversarial loss, within the run's duration; and a DMD2 run without data, that it has no GAN term."""
    if real is None:
        return [DMD2_WITHOUT_DATA] if method == "dmd2" else []
    s, kimg = real.settings, total_images / 1000
    out = []
    if s.generator_freeze_kimg >= kimg:
        out.append(f"the generator does not step before {s.generator_freeze_kimg:g} kimg "
                   f"(adversarial.generator_freeze_kimg, SiDA's), and this run lasts {kimg:g} kimg: only the online "
                   "model trains; lower adversarial.generator_freeze_kimg")
    elif s.generator_start_kimg >= kimg:
        out.append(f"the generator's adversarial loss starts at {s.generator_start_kimg:g} kimg "
                   f"(adversarial.generator_start_kimg, SiDA's), after this run's {kimg:g} kimg: the generator does not "
                   "see it; lower adversarial.generator_start_kimg")
    return out
