"""RAM-CNN H-Score regression (bcpath.ihc.ramcnn): inputs, network, augmentation, DLA,
training, cross-validation, files and the workflow step. Synthetic data only; CPU, a few
seconds of training in all."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from bcpath.errors import BcpathError
from bcpath.ihc.ramcnn import (
    H_SCORE_MAX,
    RamCnn,
    augment_batch,
    dla_labels,
    h_score_metrics,
    leave_k_out_cv,
    leave_k_out_folds,
    load_ramcnn,
    predict_h_score,
    predict_h_scores,
    save_ramcnn,
    sini_siti,
    train_ramcnn,
)
from bcpath.stain.deconvolution import combine_stains, paper_stain_vectors, stain_intensity_image
from bcpath.steps.ihc import train_ramcnn_step

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def synthetic_cores(n: int, side: int = 64, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, float, str]]:
    """Cores whose H-Score is 300 x a, a = the stain intensity of the nuclei (SINI) and, as
    0.5 + a/2, of the tumour (SITI): a disc of tissue with 2 x 2 px 'nuclei' at random."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    tissue = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (0.42 * side) ** 2
    cores = []
    for i in range(n):
        a = rng.uniform(0.05, 0.95)
        seeds = rng.random((side // 2, side // 2)) < 0.15
        nuclei = np.kron(seeds, np.ones((2, 2), bool)) & tissue
        noise = rng.normal(0, 0.03, (side, side))
        sini = np.clip(a + noise, 0, 1) * nuclei
        siti = np.clip(0.5 + 0.5 * a + noise, 0, 1) * tissue
        cores.append((sini.astype(np.float32), siti.astype(np.float32), float(300 * a), f"core{i}"))
    return cores


# ---------------------------------------------------------------------------------------------
# SINI / SITI


def test_sini_siti_masks_the_stain_intensity_image():
    rng = np.random.default_rng(1)
    conc = np.zeros((64, 64, 3))
    conc[..., 0] = 0.05 + 0.02 * rng.random((64, 64))
    conc[16:32, 16:32, 0] = 0.6  # a blue nucleus
    conc[40:56, 40:56, 1] = 0.7  # a brown nucleus
    rgb = combine_stains(conc)
    nuclei = np.zeros((64, 64), bool)
    nuclei[16:32, 16:32] = nuclei[40:56, 40:56] = True
    tumour = np.zeros((64, 64), bool)
    tumour[:, 32:] = True
    sini, siti = sini_siti(rgb, nuclei, tumour, white=255.0)
    ila = stain_intensity_image(rgb, stains=paper_stain_vectors(), i0=255.0)
    assert sini.dtype == siti.dtype == np.float32 and sini.shape == siti.shape == (64, 64)
    assert 0 <= sini.min() and sini.max() <= 1 and 0 <= siti.min() and siti.max() <= 1
    np.testing.assert_array_equal(sini[~nuclei], 0)
    np.testing.assert_array_equal(siti[~tumour], 0)
    np.testing.assert_allclose(sini[nuclei], ila[nuclei])
    np.testing.assert_allclose(siti[tumour], ila[tumour])
    # DAB-positive nucleus below 0.5, hematoxylin nucleus above (I_la's convention).
    assert sini[44:52, 44:52].mean() < 0.5 < sini[20:28, 20:28].mean()
    # No tumour mask: the whole tissue (summed OD > 0.15): here the two nuclei, not the faint
    # background (OD sum ~0.1).
    _, whole = sini_siti(rgb, nuclei, None, white=255.0)
    np.testing.assert_array_equal(whole > 0, nuclei)
    with pytest.raises(BcpathError, match="mpp"):
        sini_siti(rgb, None, tumour)
    with pytest.raises(BcpathError, match="differs"):
        sini_siti(rgb, nuclei[:32], tumour)
    # Nuclei from bcpath.ihc.cells when no mask is given.
    g_sini, _ = sini_siti(rgb, None, tumour, mpp=0.5, white=255.0)
    assert g_sini[20:28, 20:28].min() > 0 and g_sini[2:10, 2:10].max() == 0


# ---------------------------------------------------------------------------------------------
# Network


def test_shapes_and_output_range():
    torch.manual_seed(0)
    model = RamCnn(size=64).eval()
    for side in (64, 96, 128):
        x = torch.rand(3, 2, side, side)
        out = model(x)
        assert out.shape == (3,)
        torch.testing.assert_close(model(x[:, :1], x[:, 1:]), out)
    sini, siti = np.random.default_rng(0).random((2, 100, 100)).astype(np.float32)
    h = predict_h_score(model, sini, siti)  # resized to 64
    assert isinstance(h, float) and 0 <= h <= H_SCORE_MAX
    with torch.no_grad():
        model.head[-1].bias.fill_(10.0)  # far above 300 / 300: clipped
    assert predict_h_score(model, sini, siti) == H_SCORE_MAX
    with torch.no_grad():
        model.head[-1].bias.fill_(-10.0)
    assert predict_h_score(model, sini, siti) == 0.0
    with pytest.raises(BcpathError, match="64"):
        RamCnn(size=32)
    with pytest.raises(BcpathError, match="square"):
        predict_h_score(model, sini[:, :90], siti[:, :90])


def test_branches_have_independent_weights():
    torch.manual_seed(0)
    model = RamCnn(size=64)
    sini_params = list(model.sini_column.parameters())
    siti_params = list(model.siti_column.parameters())
    assert {p.data_ptr() for p in sini_params}.isdisjoint({p.data_ptr() for p in siti_params})
    # Even from equal weights, the columns move apart when their inputs differ.
    model.siti_column.load_state_dict(model.sini_column.state_dict())
    x = torch.zeros(2, 2, 64, 64)
    x[:, 0] = torch.rand(2, 64, 64)  # SINI carries signal, SITI is empty
    loss = (model(x) - 1).pow(2).mean()
    loss.backward()
    assert model.sini_column[0].weight.grad.abs().sum() > 0
    assert model.siti_column[0].weight.grad.abs().sum() == 0  # no input, no gradient
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.sini_column[0].weight, model.siti_column[0].weight)


# ---------------------------------------------------------------------------------------------
# Augmentation and DLA


def test_augmentation_keeps_sini_and_siti_aligned():
    base = torch.rand(8, 1, 64, 64)
    x = torch.cat([base, 2 * base], dim=1)  # same geometry, different values
    out = augment_batch(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out[:, 1], 2 * out[:, 0])
    assert not torch.allclose(out, x)
    # Deterministic for a seed.
    torch.testing.assert_close(out, augment_batch(x, torch.Generator().manual_seed(3)))
    # A dot near the centre moves by at most the shift (10% of 64 = 6 px) plus rounding.
    dot = torch.zeros(16, 2, 64, 64)
    dot[:, :, 32, 32] = 1.0
    moved = augment_batch(dot, torch.Generator().manual_seed(5), p_small_angle=0.0)
    for sample in moved:
        peak0 = divmod(int(sample[0].argmax()), 64)
        assert peak0 == divmod(int(sample[1].argmax()), 64)
        assert abs(peak0[0] - 32) <= 7 and abs(peak0[1] - 32) <= 7
        assert float(sample[0].max()) == pytest.approx(1.0, abs=1e-4)  # whole-pixel moves: not blurred
    # Without small angles and shifts: exact quarter turns.
    still = augment_batch(x, torch.Generator().manual_seed(7), max_shift=0.0, p_small_angle=0.0)
    for a, b in zip(still, x, strict=True):
        assert any(torch.allclose(a, torch.rot90(b, k, dims=(1, 2)), atol=1e-5) for k in range(4))


def test_dla_draws_labels_with_the_given_mean_and_sigma():
    labels = dla_labels(150.0, 20000, 9.0, np.random.default_rng(0))
    assert labels.shape == (20000,)
    assert abs(labels.mean() - 150.0) < 0.3  # SE 9 / sqrt(20000) = 0.064
    assert abs(labels.std() - 9.0) < 0.2
    # sigma is in H-Score points: the paper's 0.9 stays within a few points of the reference.
    small = dla_labels(0.0, 10000, 0.9, np.random.default_rng(1))
    assert abs(small.std() - 0.9) < 0.05 and np.abs(small).max() < 5
    np.testing.assert_array_equal(dla_labels(80.0, 5, 0.0, np.random.default_rng(2)), np.full(5, 80.0))
    with pytest.raises(BcpathError):
        dla_labels(80.0, 0, 1.0, np.random.default_rng(2))
    with pytest.raises(BcpathError):
        dla_labels(80.0, 3, -1.0, np.random.default_rng(2))


# ---------------------------------------------------------------------------------------------
# Training, CV, metrics


def test_training_beats_predicting_the_mean():
    cores = synthetic_cores(20)
    refs = np.array([c[2] for c in cores])
    baseline = float(np.mean((refs - refs.mean()) ** 2))
    model, history = train_ramcnn(cores, epochs=15, batch_size=8, n_dla_labels=4, dla_sigma=0.9, size=64, seed=0, device="cpu")
    assert len(history) == 15 and history[-1]["loss"] < history[0]["loss"]
    assert history[0]["n_samples"] == 80
    predicted = predict_h_scores(model, [(c[0], c[1]) for c in cores])
    mse = float(np.mean((predicted - refs) ** 2))
    assert mse < 0.25 * baseline, (mse, baseline)  # measured 0.06 x baseline (0.03-0.07 over other seeds)
    # Same seed, same model.
    again, _ = train_ramcnn(cores, epochs=2, batch_size=8, n_dla_labels=2, size=64, seed=1, device="cpu")
    twice, _ = train_ramcnn(cores, epochs=2, batch_size=8, n_dla_labels=2, size=64, seed=1, device="cpu")
    for a, b in zip(again.state_dict().values(), twice.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_training_rejects_bad_references():
    cores = synthetic_cores(3)
    cores[1] = (cores[1][0], cores[1][1], float("nan"), "bad")
    with pytest.raises(BcpathError, match="bad"):
        train_ramcnn(cores, epochs=1, size=64)
    with pytest.raises(BcpathError, match="no cores"):
        train_ramcnn([], epochs=1, size=64)


def test_leave_5_out_folds_partition_the_cores():
    folds = leave_k_out_folds(23, 5, seed=4)
    assert [len(f) for f in folds] == [5, 5, 5, 5, 3]
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(23))
    for a, b in zip(folds, leave_k_out_folds(23, 5, seed=4), strict=True):
        np.testing.assert_array_equal(a, b)

    cores = synthetic_cores(12, seed=2)
    table, metrics = leave_k_out_cv(cores, 5, seed=0, epochs=1, batch_size=4, n_dla_labels=1, size=64, device="cpu")
    assert list(table.columns) == ["core_id", "fold", "reference", "predicted"]
    assert table["core_id"].tolist() == [c[3] for c in cores]
    assert sorted(table.groupby("fold").size().tolist()) == [2, 5, 5]
    assert table["predicted"].between(0, 300).all()
    assert metrics["n"] == 12 and metrics["n_folds"] == 3 and metrics["k"] == 5
    assert set(metrics) >= {"mae", "sd_error", "pearson_r"}
    with pytest.raises(BcpathError, match="at least 10"):
        leave_k_out_cv(cores[:9], 5, epochs=1, size=64)


def test_h_score_metrics_hand_worked():
    # Errors +10, -10, +30, 0 -> |e| 10, 10, 30, 0: MAE 12.5; SD (ddof 1) of |e| =
    # sqrt((2.5² + 2.5² + 17.5² + 12.5²) / 3) = sqrt(475 / 3) = 12.583; bias 7.5.
    # r: deviations ref (-150, -50, 50, 150), pred (-147.5, -67.5, 72.5, 142.5):
    # 50500 / sqrt(50000 x 51875) = 0.991575.
    m = h_score_metrics([0, 100, 200, 300], [10, 90, 230, 300])
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(12.5)
    assert m["sd_error"] == pytest.approx(math.sqrt(475 / 3))
    assert m["bias"] == pytest.approx(7.5)
    assert m["sd_signed_error"] == pytest.approx(math.sqrt((2.5**2 + 17.5**2 + 22.5**2 + 7.5**2) / 3))
    assert m["pearson_r"] == pytest.approx(50500 / math.sqrt(50000 * 51875))
    # Two readers who agree exactly; NaN pairs dropped; constant side: r undefined.
    same = h_score_metrics([5, 50, np.nan], [5, 50, 60])
    assert same["n"] == 2 and same["mae"] == 0 and same["pearson_r"] == pytest.approx(1.0)
    assert math.isnan(h_score_metrics([1, 2, 3], [7, 7, 7])["pearson_r"])
    with pytest.raises(BcpathError):
        h_score_metrics([1, 2], [1])


# ---------------------------------------------------------------------------------------------
# Files and the workflow step


def test_save_load_round_trip_and_sha256_check(tmp_path):
    torch.manual_seed(0)
    model = RamCnn(size=64, width=8, hidden=32).eval()
    sha = save_ramcnn(model, tmp_path / "m", {"cv": {"mae": 12.0}, "epochs": 3})
    meta = json.loads((tmp_path / "m" / "ramcnn.json").read_text())
    assert meta["sha256"] == sha and meta["size"] == 64 and meta["cv"]["mae"] == 12.0
    assert meta["architecture"] == {"size": 64, "width": 8, "hidden": 32} and "normalisation" in meta
    loaded, loaded_meta = load_ramcnn(tmp_path / "m")
    assert loaded_meta == meta
    sini, siti = np.random.default_rng(0).random((2, 80, 80)).astype(np.float32)
    assert predict_h_score(loaded, sini, siti) == predict_h_score(model, sini, siti)
    # The file must be a plain state_dict (weights_only loading).
    assert set(torch.load(tmp_path / "m" / "ramcnn.pt", weights_only=True)) == set(model.state_dict())
    with open(tmp_path / "m" / "ramcnn.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BcpathError, match="sha256"):
        load_ramcnn(tmp_path / "m")
    with pytest.raises(BcpathError, match="not found"):
        load_ramcnn(tmp_path / "nothing")


def _core_table(tmp_path, n: int, n_without: int = 1) -> str:
    rows = []
    for i, (sini, siti, ref, _) in enumerate(synthetic_cores(n + n_without, seed=5)):
        path = tmp_path / f"core{i}.npz"
        np.savez(path, sini=sini, siti=siti)
        rows.append({"slide_id": f"TMA{i % 2}", "core_id": f"A{i}", "reference_h_score": ref if i < n else np.nan, "npz": path.name})
    table = tmp_path / "cores.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return str(table)


def test_workflow_step_writes_model_cv_and_metrics(tmp_path):
    table = _core_table(tmp_path, 10)
    out = SimpleNamespace(model=str(tmp_path / "out" / "model"), cv=str(tmp_path / "out" / "cv.csv"), metrics=str(tmp_path / "out" / "metrics.json"))
    params = SimpleNamespace(ramcnn={"size": 64, "epochs": 1, "batch_size": 4, "lr": 1e-3, "n_dla_labels": 1, "dla_sigma": 0.9, "folds_k": 5, "seed": 0})
    train_ramcnn_step(input=SimpleNamespace(cores=table), output=out, params=params, threads=1)
    cv = pd.read_csv(out.cv)
    assert list(cv.columns) == ["slide_id", "core_id", "fold", "reference", "predicted"]
    assert len(cv) == 10 and "A10" not in set(cv["core_id"])  # the core without reference is skipped
    metrics = json.loads(open(out.metrics).read())
    assert metrics["n_cores"] == 10 and metrics["n_skipped_no_reference"] == 1
    assert set(metrics["cv"]) >= {"mae", "sd_error", "pearson_r", "n"}
    model, meta = load_ramcnn(out.model)
    assert model.size == 64 and meta["cv"] == metrics["cv"] and len(meta["history"]) == 1


def test_workflow_step_needs_2k_cores(tmp_path):
    table = _core_table(tmp_path, 7, n_without=2)
    out = SimpleNamespace(model=str(tmp_path / "model"), cv=str(tmp_path / "cv.csv"), metrics=str(tmp_path / "m.json"))
    params = SimpleNamespace(ramcnn={"size": 64, "epochs": 1, "folds_k": 5})
    with pytest.raises(BcpathError, match=r"7 core\(s\) with a reference H-Score.*needs at least 10"):
        train_ramcnn_step(input=SimpleNamespace(cores=table), output=out, params=params, threads=1)


# ---------------------------------------------------------------------------------------------
# The paper's input size: the intensity-bin stem (512 px inputs)


def test_bin_intensities_split_each_pixel_between_two_bins_and_skip_zeros():
    from bcpath.ihc.ramcnn import bin_intensities

    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 0, 0] = 0.5  # halfway between the centres 0.375 (bin 1) and 0.625 (bin 2) of 4 bins
    x[0, 0, 0, 1] = 0.125  # exactly the centre of bin 0
    x[0, 1] = 1.0  # above the last centre: all in the last bin
    out = bin_intensities(x, 4, 1)
    assert out.shape == (1, 8, 4, 4)
    assert out[0, :4, 0, 0].tolist() == pytest.approx([0, 0.5, 0.5, 0])
    assert out[0, :4, 0, 1].tolist() == pytest.approx([1, 0, 0, 0])
    assert float(out[0, :4, 1:].sum()) == 0  # zeros (outside the mask) fall in no bin
    assert float(out[0, 7].min()) == 1.0 and float(out[0, 4:7].abs().sum()) == 0
    pooled = bin_intensities(x, 4, 2)
    assert pooled.shape == (1, 8, 2, 2)
    # Pooled bins sum to the share of mask pixels in each 2 x 2 block.
    assert torch.allclose(pooled[0, :4].sum(0), torch.tensor([[0.5, 0.0], [0.0, 0.0]]))


def test_512_px_model_bins_its_inputs_and_the_default_128_px_model_is_unchanged(tmp_path):
    from bcpath.ihc.ramcnn import auto_bins, prepare_inputs

    assert auto_bins(128) == (0, 1) and auto_bins(512) == (8, 8) and auto_bins(256) == (8, 4)
    cores = synthetic_cores(4, side=512, seed=3)
    model, history = train_ramcnn(cores, epochs=1, batch_size=2, size=512, n_dla_labels=1, width=4, hidden=8)
    assert model.config == {"size": 512, "width": 4, "hidden": 8, "bins": 8, "pool": 8}
    assert model.sini_column[0].in_channels == 8 and len(history) == 1
    prepared = prepare_inputs(cores, 512)
    assert prepared.shape == (4, 16, 64, 64)
    raw = torch.stack([torch.from_numpy(np.stack([c[0], c[1]])) for c in cores])
    with torch.inference_mode():
        assert torch.allclose(model(raw), model(prepared), atol=1e-6)  # raw SINI/SITI are binned in forward
    save_ramcnn(model, tmp_path / "m")
    loaded, _ = load_ramcnn(tmp_path / "m")
    pairs = [(c[0], c[1]) for c in cores]
    assert predict_h_scores(loaded, pairs).tolist() == predict_h_scores(model, pairs).tolist()
    # The demo's 128 px network has no stem: same layers and parameter names as before.
    small, _ = train_ramcnn(synthetic_cores(2), epochs=1, size=128, n_dla_labels=1)
    assert small.config == {"size": 128, "width": 16, "hidden": 128} and small.sini_column[0].in_channels == 1
    assert sum(p.numel() for p in small.parameters()) == 215297
