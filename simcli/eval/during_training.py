"""Evaluate the EMA generator while it trains: FID and IS for image teachers, exact metrics for mixtures.

The evaluator is built once (extractor and reference statistics loaded before the first iteration, so a
missing file fails fast) and then called by the loop with the EMA generator at every evaluation point.
The same seeds are used every time, so successive records differ only by the generator. In a run of several
processes each generates and embeds its share of the samples; rank 0 gathers them (in seed order, so the result
is the one-process result), scores them and hands the record to the others.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from simcli.config.spec import RunSpec
from simcli.errors import UsageError
from simcli.eval.features import get_extractor
from simcli.eval.gmm_metrics import gmm_report
from simcli.eval.image_eval import fid_reference, score_features
from simcli.eval.image_inputs import to_rgb_nchw
from simcli.eval.stats import compute_features
from simcli.nets.few_step import generator_sigmas
from simcli.sampling.decode import image_decoder
from simcli.sampling.run import generator_batches
from simcli.teachers.registry import Teacher
from simcli.world import World

Evaluation = dict[str, Any]


def make_evaluator(spec: RunSpec, teacher: Teacher, device: torch.device, world: World | None = None):
    """The callable (EMA generator, images seen) -> record values, or None when evaluation is off.

    Passed to the distillation loop by the CLI (`simcli.distill.loop.EvaluatorFactory`); every process of the run
    calls it and gets the same values.
    """
    if spec.logging.eval_every_kimg is None:
        return None
    world = world if world is not None else World()
    ev, g = spec.evaluation, spec.generator
    sigmas = generator_sigmas(g.sigma_init, g.steps, g.step_sigmas)

    def samples(net: nn.Module):
        return generator_batches(net, sigmas, ev.num_samples, ev.seed, ev.batch_size, device,
                                 shard=(world.rank, world.size))

    def scored(share: Any, score: Any) -> Evaluation:
        """Gather every process's share on rank 0 (in rank order), score them there, and hand out the values."""
        shares = world.gather_to_main(share)
        return world.on_main(lambda: score(shares))

    if teacher.mixture is not None:
        mixture = copy.deepcopy(teacher.mixture).to("cpu")  # .to() moves a module in place: keep the training one

        def exact(net: nn.Module, images_seen: int) -> Evaluation:
            batches = [batch for batch, _ in samples(net)]
            share = torch.cat(batches) if batches else torch.zeros((0, *net.sample_shape))

            def score(shares: list[torch.Tensor]) -> Evaluation:
                report = gmm_report(torch.cat(shares), mixture, seed=1_000_003)
                keys = ("mode_weight_l1", "precision", "mmd", "sw2")
                return {"n": report["n"], "backend": "exact", "reference": spec.teacher, "score": report["mmd"],
                        **{k: report[k] for k in keys}}

            return scored(share, score)

        return exact

    if teacher.denoiser.conditioning.takes_text:
        raise UsageError("in-training evaluation of text-to-image runs is not supported",
                         hint="drop --eval-every; score samples of a snapshot with simcli sample --prompts and simcli eval")
    extractor = get_extractor(ev.backend, feature_weights=ev.feature_weights, device=device)
    want_is = ev.inception_score and extractor.has_logits
    ref_name = ev.reference or teacher.fid_reference
    if ref_name is None:
        raise UsageError(
            f"in-training FID for teacher '{teacher.display_name}' needs a reference",
            hint="set --fid-ref (evaluation.reference) to a statistics .npz, a folder of images or a known name",
        )
    reference = fid_reference(ref_name, extractor, batch_size=ev.batch_size)  # EDM2's img512/img64 too
    metrics = {"fid", "is"} if want_is else {"fid"}
    decode = image_decoder(teacher.architecture, device)  # an EDM2 teacher's latents: through its VAE

    def fid(net: nn.Module, images_seen: int) -> Evaluation:
        batches = [to_rgb_nchw(decode(x)) for x, _ in samples(net)]
        share = compute_features(batches, extractor, want_logits=want_is) if batches else None

        def score(shares: list[tuple[np.ndarray, np.ndarray | None] | None]) -> Evaluation:
            parts = [s for s in shares if s is not None]
            feats = np.concatenate([f for f, _ in parts])
            logits = np.concatenate([lg for _, lg in parts]) if want_is else None
            scores = score_features(feats, logits, metrics, reference)
            return {"n": int(len(feats)), "backend": ev.backend, "reference": ref_name, "score": scores["fid"],
                    "is_mean": None, "is_std": None, **scores}

        return scored(share, score)

    return fid
