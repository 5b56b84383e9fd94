import json

import pytest
import torch
from PIL import Image

from bagel.checkpoint import load
from bagel.embeddings import patchify_latent
from bagel.errors import InputError
from bagel.image import to_tensor
from bagel.train import (
    SequenceBuilder,
    autoencoder_loss,
    decoder_loss,
    flow_loss,
    motion_weight,
    noisy,
    reply_loss,
)
from workbench.world.render import make_level, random_world

TEXT = "Move the camera forward."


@pytest.fixture(autouse=True)
def one_thread():
    """These small tensors train fastest on one thread (several contend on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frame(seed: int) -> Image.Image:
    return Image.fromarray(random_world(seed, make_level(seed)).render())


def test_training_velocity_equals_the_pipelines(tiny_dir):
    """Context (image, text), then a window of two noisy frames at their own times: the
    training forward and `predict_frames`'s forward give the same velocities."""
    pipe = load(tiny_dir, device="cpu", dtype="float32", attn_backend="math")
    image = pipe.prepare_image(frame(1))
    latent = pipe.encode_latent(image, posterior_mean=True)
    ctx = pipe.new_context()
    pipe.append_latent(ctx, latent)
    pipe.append_vit(ctx, image)
    pipe.append_text(ctx, TEXT)
    grid = (latent.shape[1] // 2, latent.shape[2] // 2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, grid[0] * grid[1], pipe.config.patch_latent_dim, generator=gen)
    t = torch.tensor([0.3, 0.8])
    expected = pipe.frames_velocity(x, t, grid, [ctx], [True])[0]

    pipe.net.requires_grad_(True)  # loaded for inference; training turns gradients on
    seq = SequenceBuilder(pipe.net, pipe.tokenizer, batch=1)
    seq.add_image(latent[None], to_tensor(pipe.vit_rule.resize(image))[None])
    seq.add_text(torch.tensor([pipe.tokenizer.frame(TEXT)]))
    got = seq.frames_velocity(x[None], t[None], grid)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert got.requires_grad


def test_training_reply_logits_equal_the_pipelines_scores(tiny_dir):
    pipe = load(tiny_dir, device="cpu", dtype="float32", attn_backend="math")
    ctx = pipe.new_context()
    pipe.append_text(ctx, TEXT)
    answer = "a red wall"
    score = pipe.score_continuations(ctx, [answer])[0]
    ids = [*pipe.tokenizer.encode(answer), pipe.tokenizer.eos_id]
    seq = SequenceBuilder(pipe.net, pipe.tokenizer, batch=1)
    seq.add_text(torch.tensor([pipe.tokenizer.frame(TEXT)]))
    logits = seq.reply_logits(torch.tensor([[pipe.tokenizer.bos_id, *ids[:-1]]]))
    loss = reply_loss(logits, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
    assert abs(float(loss) * len(ids) + score) < 1e-3


def test_a_training_step_lowers_the_loss_on_a_fixed_batch(tiny_dir):
    pipe = load(tiny_dir, device="cpu", dtype="float32")
    net = pipe.net.train().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    images = [pipe.prepare_image(frame(s)) for s in (1, 2)]
    latents = torch.stack([pipe.encode_latent(im, posterior_mean=True) for im in images])
    vit = torch.stack([to_tensor(pipe.vit_rule.resize(im)) for im in images])
    x0 = torch.stack([patchify_latent(z, 2) for z in latents])[:, None]  # [B, 1, N, 64]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([[0.5], [0.7]])
    text = torch.tensor([pipe.tokenizer.frame(TEXT)] * 2)

    def loss() -> torch.Tensor:
        seq = SequenceBuilder(net, pipe.tokenizer, batch=2)
        seq.add_image(latents, vit)
        seq.add_text(text)
        v = seq.frames_velocity(noisy(x0, noise, t), t, (4, 4))
        return torch.nn.functional.mse_loss(v, noise - x0)

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    first = loss()
    for _ in range(3):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert float(loss().detach()) < 0.9 * float(first.detach())


def test_an_autoencoder_step_lowers_its_loss(tiny_dir):
    pipe = load(tiny_dir, device="cpu", dtype="float32")
    ae = pipe.ae.train().requires_grad_(True)
    pixels = torch.stack([to_tensor(frame(s)) for s in (1, 2)])
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    first = None
    for _ in range(4):
        opt.zero_grad()
        loss, _ = autoencoder_loss(ae, pixels, torch.Generator().manual_seed(0))
        first = float(loss) if first is None else first
        loss.backward()
        opt.step()
    loss, _ = autoencoder_loss(ae, pixels, torch.Generator().manual_seed(0))
    assert float(loss) < first


def test_a_decoder_step_trains_the_decoder_alone_so_the_latents_stay(tiny_dir):
    pipe = load(tiny_dir, device="cpu", dtype="float32")
    ae = pipe.ae
    ae.decoder.requires_grad_(True)
    pixels = torch.stack([to_tensor(frame(s)) for s in (1, 2)])
    with torch.no_grad():
        latents = ae.encode_moments(pixels)[0]
    encoder = {k: v.clone() for k, v in ae.encoder.state_dict().items()}
    opt = torch.optim.Adam(ae.decoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = decoder_loss(ae, pixels, torch.Generator().manual_seed(0))
        losses.append(float(loss))
        loss.backward()
        opt.step()
    assert float(decoder_loss(ae, pixels, torch.Generator().manual_seed(0))) < losses[0]
    assert all(p.grad is None for p in ae.encoder.parameters())
    assert all(torch.equal(v, encoder[k]) for k, v in ae.encoder.state_dict().items())
    with torch.no_grad():
        assert torch.equal(ae.encode_moments(pixels)[0], latents)


def test_train_world_writes_a_loadable_checkpoint_and_resumes(tmp_path):
    from bagel.checkpoint import load as load_checkpoint
    from workbench.world.train import TrainOptions, train_world

    out = tmp_path / "world"
    options = TrainOptions(steps=1, ae_steps=2, batch=4)
    state = train_world(out, options)
    assert (state["ae_step"], state["step"]) == (2, 1)
    pipe = load_checkpoint(out, device="cpu", dtype="float32")
    assert pipe.config.llm.hidden_size == 128
    from workbench.world.model import is_world_model

    assert is_world_model(out) and not is_world_model(tmp_path)  # the app's rule
    assert pipe.ae.config.scale_factor != 0.3611  # set from the data after the AE phase
    ids = pipe.tokenizer.encode("a red wall near ahead, a blue ball on the left.")
    assert pipe.tokenizer.decode(ids) == "a red wall near ahead, a blue ball on the left."
    # a record of a step after the last save (a run killed between saves) is dropped
    log_file = out / "train" / "log.jsonl"
    with open(log_file, "a") as handle:
        handle.write('{"ae_step": 2, "step": 2, "seconds": 1.0, "nav": 9.0}\n')
    # resumed with more autoencoder steps: its phase is over once the decoder trains
    state = train_world(out, TrainOptions(steps=2, ae_steps=5, batch=4), resume=True)
    assert (state["ae_step"], state["step"]) == (2, 2)
    log = (out / "train" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4 and '"nav"' in log[-1] and '"nav": 9.0' not in "".join(log)
    # phase 2 trains the autoencoder's decoder every other step, resumably
    assert '"ae_decoder"' in log[-2] and '"ae_decoder"' not in log[-1]
    assert (out / "train" / "ae_decoder_optimizer.safetensors").exists()


def test_render_workers_draw_the_batches_inline_rendering_draws(tmp_path):
    """Each step's batch is a function of its key: rendered ahead by worker processes,
    training takes exactly the steps it takes rendering inline."""
    from workbench.world.train import TrainOptions, train_world

    def losses(out, workers):
        train_world(out, TrainOptions(steps=3, ae_steps=1, batch=4, render_workers=workers))
        records = [json.loads(line) for line in (out / "train" / "log.jsonl").open()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    inline = losses(tmp_path / "inline", 0)
    assert len(inline) == 4 and "ae_decoder" in inline[1]
    assert losses(tmp_path / "workers", 2) == inline


def test_motion_weight_weighs_the_tokens_that_change():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(2, 4, 8, generator=g)
    targets = before[:, None].repeat(1, 3, 1, 1)  # [B, W, N, D]: three copies ...
    targets[0, 1, 2] += 1.0  # ... but one token of one frame changes
    weight = motion_weight(targets, before, strength=4.0)
    assert weight.shape == (2, 3, 4)
    change_mean = 8 / weight.numel()  # the changed token's squared change (8), over all
    assert weight[0, 1, 2] == pytest.approx(1 + 4 * 8 / change_mean)
    assert torch.all(weight.flatten()[torch.arange(weight.numel()) != 6] == 1)
    # the weighted loss: unweighted when uniform, else the weighted mean of the errors
    velocity, x0, noise = (torch.randn(2, 3, 4, 8, generator=g) for _ in range(3))
    plain = flow_loss(velocity, x0, noise)
    assert plain == pytest.approx(float(((velocity - (noise - x0)) ** 2).mean()))
    assert flow_loss(velocity, x0, noise, torch.full((2, 3, 4), 5.0)) == pytest.approx(plain)
    per_token = ((velocity - (noise - x0)) ** 2).mean(-1)
    expected = (per_token * weight).sum() / weight.sum()
    assert flow_loss(velocity, x0, noise, weight) == pytest.approx(float(expected))


def test_motion_weight_changes_only_the_future_frames_loss(tmp_path):
    from workbench.world.train import TrainOptions, train_world

    def first_model_step(out, weight):
        train_world(out, TrainOptions(steps=1, ae_steps=1, batch=4, motion_weight=weight))
        return json.loads((out / "train" / "log.jsonl").read_text().splitlines()[1])

    plain, weighted = first_model_step(tmp_path / "a", 0.0), first_model_step(tmp_path / "b", 4.0)
    assert weighted["nav"] == plain["nav"] and weighted["caption"] == plain["caption"]
    assert weighted["future"] != plain["future"]


def test_a_run_can_start_from_a_trained_autoencoder_with_finer_tokens(tmp_path):
    """--autoencoder: the decoder phase starts at once on the given autoencoder (weights,
    latent shift and scale); --latent-patch-size 1 makes a frame 64 tokens; --hidden
    sizes the decoder."""
    from workbench.world.eval import WORLD_MODEL
    from workbench.world.train import TrainOptions, train_world

    out = tmp_path / "fine"
    options = TrainOptions(
        steps=1,
        ae_steps=0,
        batch=2,
        ae_decoder_every=0,
        hidden=64,
        latent_patch_size=1,
        autoencoder=str(WORLD_MODEL),
    )
    state = train_world(out, options)
    assert (state["ae_step"], state["step"]) == (0, 1)
    pipe = load(out, device="cpu", dtype="float32")
    shipped = load(WORLD_MODEL, device="cpu", dtype="float32")
    assert pipe.config.ae == shipped.config.ae  # its shift and scale, not new ones
    for name, value in shipped.ae.state_dict().items():
        assert torch.equal(pipe.ae.state_dict()[name], value), name
    assert pipe.config.llm.hidden_size == 64 and pipe.config.latent_patch_size == 1
    assert pipe.image_token_counts(64, 64)[0] == 64 + 2  # 8 × 8 latent tokens, framed
    with pytest.raises(InputError, match="holds no trained autoencoder"):
        TrainOptions(autoencoder=str(tmp_path / "none"))


def test_context_noise_changes_the_frames_losses(tmp_path):
    from workbench.world.train import TrainOptions, train_world

    def first_model_step(out, noise):
        train_world(out, TrainOptions(steps=1, ae_steps=1, batch=4, context_noise=noise))
        return json.loads((out / "train" / "log.jsonl").read_text().splitlines()[1])

    plain, noised = first_model_step(tmp_path / "a", 0.0), first_model_step(tmp_path / "b", 0.3)
    assert noised["nav"] != plain["nav"] and noised["future"] != plain["future"]
    with pytest.raises(InputError, match="context noise"):
        TrainOptions(context_noise=1.5)
