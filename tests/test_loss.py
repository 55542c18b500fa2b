"""The fine-tuning objective: its pieces, the step's loss built from them, and its gradients across two ranks.

Gradient checks run the TINY model in float64 and eval mode (no dropout, fixed BatchNorm statistics), so a
mistake shows as an error many orders above rounding.
"""

import inspect
import math
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from modelkit import synthetic_state_dict
from safetensors.torch import load_file, save_file

from audiofind.model.audio import FBSP
from audiofind.model.config import TINY
from audiofind.model.tokenizer import tokenize
from audiofind.train.config import TrainConfig
from audiofind.train.loss import PairForward, contrastive_loss, fbsp_penalty, rescale_fbsp_grads
from audiofind.train.step import step_loss
from trainkit import float64_model, grads

CAPTIONS = ["a dog barks", "rain on a tin roof", "a high pitched beep", "a car passes by on a wet road"]
pytestmark = pytest.mark.usefixtures("one_thread")


def grad_case() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Recipe weights with the logit scale at 10 (inside its clamp, so it learns) and four distinct pairs."""
    state = synthetic_state_dict(TINY)
    state["logit_scale_at"] = torch.tensor(math.log(10.0))
    g = torch.Generator().manual_seed(0)
    audio = (torch.rand(len(CAPTIONS), 1, 8000, generator=g, dtype=torch.float64) * 2 - 1) * 16384
    audio[:, :, ::2] *= torch.linspace(0.1, 1.0, len(CAPTIONS), dtype=torch.float64)[:, None, None]  # not all alike
    tokens = tokenize(CAPTIONS)
    return state, audio, tokens[:, : int(tokens.argmax(-1).max()) + 1].contiguous()


def symmetric_ce(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Spec (d) for one pair of modalities: CE over the rows plus CE over the columns, matches on the diagonal."""
    target = torch.arange(len(logits))
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing) + F.cross_entropy(
        logits.T, target, label_smoothing=label_smoothing
    )


# ---------------------------------------------------------------- the pieces


def test_loss_is_symmetric_cross_entropy_with_smoothing() -> None:
    torch.manual_seed(0)
    a, t = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(10.0)
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T
    torch.testing.assert_close(contrastive_loss(a, t, scale, 0.1), symmetric_ce(logits, 0.1))
    assert contrastive_loss(a, a, scale) < contrastive_loss(a, a.roll(1, 0), scale)
    assert contrastive_loss(a.double(), t.double(), scale).dtype == torch.float64  # float64 checks stay float64
    assert contrastive_loss(a.half(), t.half(), scale.half()).dtype == torch.float32  # autocast halves get float32


def test_fbsp_regulariser_and_gradient_rescaling() -> None:
    fbsp = FBSP(256)
    assert fbsp_penalty(*fbsp.filters()).item() == pytest.approx(0.0, abs=1e-10)  # unit-norm filters at init
    with torch.no_grad():
        fbsp.fb.mul_(4.0)  # ||W_k|| = sqrt(fb) = 2
    assert fbsp_penalty(*fbsp.filters()).item() == pytest.approx(1.0, rel=1e-5)
    fbsp_penalty(*fbsp.filters()).backward()
    raw = fbsp.fb.grad.clone()
    rescale_fbsp_grads(fbsp)
    torch.testing.assert_close(fbsp.fb.grad, raw / (raw.abs().max() + 1e-8))  # by its inf-norm, + 1e-8
    assert fbsp.fb.grad.abs().max().item() == pytest.approx(1.0, rel=1e-3)


# ---------------------------------------------------------------- the step's loss


def test_step_loss_is_smoothed_cross_entropy_plus_the_weighted_fbsp_regulariser() -> None:
    """Spec (d), written out here from the model's outputs, against what the training step computes."""
    state, audio, tokens = grad_case()
    model = float64_model(state)
    cfg = TrainConfig(label_smoothing=0.25, fbsp_weight=3.0)  # not the defaults: the step must read cfg
    params = [p for p in model.parameters() if p.requires_grad]

    a, t = F.normalize(model.encode_audio(audio)), F.normalize(model.encode_text(tokens))
    logits = model.logit_scale_at.exp() * a @ t.T  # the scale is 10, inside its clamp
    re, im = model.audio.fbsp.filters()
    penalty = ((re.square() + im.square()).sum(-1).sqrt() - 1).square().mean()  # over the K filters
    expected = symmetric_ce(logits, 0.25) + 3.0 * penalty
    # each term moves the loss far beyond float64 rounding, so dropping either one fails below
    assert abs(symmetric_ce(logits, 0.25) - symmetric_ce(logits, 0.0)).item() > 1e-3 and 3.0 * penalty.item() > 1e-3

    got = step_loss(PairForward(model), audio, tokens, cfg, nullcontext())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    wanted = torch.autograd.grad(expected, params, retain_graph=True)  # eval mode shares the cached fbsp projection
    for name, want, have in zip(names, wanted, torch.autograd.grad(got, params)):
        torch.testing.assert_close(have, want, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------- two ranks


WORKER = inspect.cleandoc("""
    import sys
    from contextlib import nullcontext
    from datetime import timedelta
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from torch.nn.parallel import DistributedDataParallel as DDP
    from audiofind.train.config import TrainConfig
    from audiofind.train.loss import PairForward
    from audiofind.train.step import step_loss
    from trainkit import float64_model, grads
    torch.set_num_threads(1)
    case, port, rank, world = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    model = float64_model(load_file(case / "state.safetensors"))
    batch = load_file(case / "batch.safetensors")
    mine = slice(rank * len(batch["audio"]) // world, (rank + 1) * len(batch["audio"]) // world)
    step_model = DDP(PairForward(model))
    step_loss(step_model, batch["audio"][mine], batch["tokens"][mine], TrainConfig(), nullcontext()).backward()
    save_file(grads(model), case / f"rank{rank}.safetensors")
    dist.destroy_process_group()
""")


def test_two_ranks_give_the_gradient_of_one_process_on_their_concatenated_batch(tmp_path: Path) -> None:
    """Each rank's loss sees every rank's pairs as negatives, and DDP's average is the global batch's gradient.

    Without the all-gather each rank contrasts only its own two pairs; without the gradient scaling the encoders'
    gradients come out halved. Either is far outside 1e-6.
    """
    state, audio, tokens = grad_case()
    save_file(state, tmp_path / "state.safetensors")
    save_file({"audio": audio, "tokens": tokens}, tmp_path / "batch.safetensors")
    (tmp_path / "worker.py").write_text(WORKER)
    tests = Path(__file__).parent
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    # This process holds the rendezvous store, on a port the kernel picked, and the two ranks meet there.
    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    args = [sys.executable, str(tmp_path / "worker.py"), str(tmp_path), str(store.port)]
    ranks = [
        subprocess.Popen(args + [str(r), "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    try:
        model = float64_model(state)  # meanwhile, one process on all four pairs
        step_loss(PairForward(model), audio, tokens, TrainConfig(), nullcontext()).backward()
        expected = grads(model)
        assert len(expected) > 20 and max(g.abs().max().item() for g in expected.values()) > 1e-2
        for worker in ranks:
            output = worker.communicate(timeout=300)[0]
            assert worker.returncode == 0, output[-5000:]
    finally:
        for worker in ranks:
            worker.kill()  # a rank left waiting for a dead peer; a no-op on one that has ended
            worker.wait()
    for rank in (0, 1):
        got = load_file(tmp_path / f"rank{rank}.safetensors")
        assert got.keys() == expected.keys()
        for key, want in expected.items():
            torch.testing.assert_close(
                got[key], want, rtol=0, atol=1e-6, msg=lambda m, rank=rank, key=key: f"rank {rank}, {key}: {m}"
            )
