"""lrpfx.evaluation against hand-computed cases: a linear model whose perturbation curves are
known in closed form, the areas, the statistics, the imputers, and the ground-truth metrics."""

import csv
import json

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.evaluation import groundtruth, perturbation, sanity, stats, tune
from lrpfx.evaluation.imputers import Mean, NoisyLinear

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear():
    """logit_0 = 4 x_0 + 3 x_1 + 2 x_2 + 1 x_3 over a 1×2×2 image, logit_1 = 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    return model.eval()


def _run(**options):
    x = torch.ones(3, 1, 2, 2)
    return lrpfx.evaluate(_linear(), x, ["epsilon"], references=["input×gradient", "random"],
                          imputer=Mean((0.0,)), steps=4, progress=False, **options)


def test_curves_of_a_linear_model_are_the_hand_computed_ones():
    # x = 1, relevance = w: MoRF removes 4, 3, 2, 1 -> logits 10, 6, 3, 1, 0; LeRF 10, 9, 7, 4, 0
    result = _run(faithfulness_size=1, faithfulness_runs=20)
    assert result.protocol.patch == 1 and result.protocol.patches == 4
    rows = {r.name: r for r in result.rows}
    for name in ("epsilon", "input×gradient"):
        row = rows[name]
        torch.testing.assert_close(row.morf["logit"][0], torch.tensor([1, .6, .3, .1, 0.]))
        torch.testing.assert_close(row.lerf["logit"][0], torch.tensor([1, .9, .7, .4, 0.]))
        torch.testing.assert_close(row.morf_auc, torch.full((3,), 0.375))  # (.5 + .6 + .3 + .1) / 4
        torch.testing.assert_close(row.lerf_auc, torch.full((3,), 0.625))  # (.5 + .9 + .7 + .4) / 4
        assert row.interval.mean == pytest.approx(0.25)
        assert row.conservation is not None and float(row.conservation.max()) < 1e-6
        assert float(row.negative.max()) == 0.0
        # subsets of one pixel: the drop is w_i, the attribution w_i -> correlation 1
        torch.testing.assert_close(row.faithfulness, torch.ones(3, dtype=torch.float64))
    assert rows["random"].conservation is None
    assert [r.name for r in result.rows][-1] == "random"  # the floor sorts last here
    # the softmax probability curve is normalised by the unperturbed probability
    p0 = torch.softmax(torch.tensor([10.0, 0.0]), 0)[0]
    p2 = torch.softmax(torch.tensor([3.0, 0.0]), 0)[0]
    assert float(rows["epsilon"].morf["prob"][0, 2]) == pytest.approx(float(p2 / p0))


def test_paired_test_between_equal_rows_finds_no_difference():
    result = _run()
    assert {result.paired.a, result.paired.b} == {"epsilon", "input×gradient"}
    assert not result.paired.significant and result.paired.p == 1.0
    assert "no significant difference" in result.paired.verdict()


def test_save_writes_json_csv_png_with_protocol_and_curves(tmp_path):
    result = _run()
    paths = result.save(tmp_path)
    saved = json.loads(paths[0].read_text())
    assert {"patch", "steps", "imputer", "score", "n", "seed", "model_hash",
            "lrpfx_version"} <= saved["protocol"].keys()
    assert saved["curves"]["epsilon"]["morf_logit"][0] == pytest.approx([1, .6, .3, .1, 0])
    with paths[1].open() as file:
        # rows x orders x scores x samples x points, and the header
        assert len(list(csv.reader(file))) == 1 + 3 * 2 * 2 * 3 * 5
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    assert "epsilon" in result.markdown()


def test_auc_and_statistics_by_hand():
    assert float(stats.auc(torch.tensor([0.3, 0.3, 0.3]))) == pytest.approx(0.3)
    assert float(stats.auc(torch.tensor([1.0, 0.5, 0.0]))) == pytest.approx(0.5)
    torch.testing.assert_close(stats.ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])),
                               torch.tensor([2.5, 0.0, 2.5, 1.0], dtype=torch.float64))
    assert float(stats.spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 4, 9, 16]))) \
        == pytest.approx(1.0)
    assert float(stats.ssim(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 6]))) \
        == pytest.approx(1.0)
    interval = stats.bootstrap(torch.full((10,), 2.0))
    assert (interval.mean, interval.low, interval.high) == (2.0, 2.0, 2.0)
    shifted = stats.paired_test(torch.arange(30.0) + 1, torch.arange(30.0), ("a", "b"))
    assert shifted.significant and shifted.verdict().startswith("a is better than b")


def test_patches_pool_and_unpool_with_a_cut_last_patch():
    grid = perturbation.Grid(3, 3, 2)  # patches: 2×2, 2×1, 1×2, 1×1
    relevance = torch.arange(9.0).reshape(1, 1, 3, 3)
    torch.testing.assert_close(grid.pool(relevance), torch.tensor([[8.0, 7.0, 13.0, 8.0]]))
    pixels = grid.pixels(torch.tensor([[False, True, False, False]]))
    assert pixels[0, 0].tolist() == [[False, False, True], [False, False, True],
                                     [False, False, False]]
    assert perturbation.step_counts(4, 2).tolist() == [0, 2, 4]
    ranks = perturbation.removal_ranks(torch.tensor([[1.0, 5.0, 3.0]]), True,
                                       torch.Generator().manual_seed(0))
    assert ranks.tolist() == [[2, 0, 1]]


def test_noisy_linear_imputation_reproduces_a_linear_image():
    x = torch.linspace(0, 1, 8).expand(1, 1, 8, 8).clone()  # a ramp: harmonic, the fixed point
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 2:6, 3:5] = True
    filled = NoisyLinear(noise=0.0, iterations=300)(x, mask)
    torch.testing.assert_close(filled, x, atol=1e-6, rtol=0)
    assert float(Mean((0.5,))(x, mask)[mask].unique()) == 0.5


def test_ground_truth_metrics_by_hand():
    relevance = torch.tensor([[[[3.0, -1.0], [1.0, 0.0]]]])
    mask = torch.tensor([[[[True, True], [False, False]]]])
    assert float(groundtruth.mass_accuracy(relevance, mask)) == pytest.approx(0.75)  # 3 / (3+1)
    assert float(groundtruth.rank_accuracy(relevance, mask)) == pytest.approx(0.5)  # top 2: 3, 1


def test_randomization_changes_a_linear_explanation_and_orders_layers_top_down():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    assert sanity.layer_order(model) == ["4", "1", "0"]
    x = torch.rand(4, 1, 2, 2)
    result = sanity.randomization(model, x, ["epsilon"], references=["gradient"])
    assert [row.name for row in result.rows] == ["epsilon", "gradient"]
    assert all(len(row.spearman) == 3 for row in result.rows)
    strict = sanity.randomization(model, x, ["epsilon"], references=(), threshold=-1.0)
    assert strict.rows[0].flagged  # a threshold every similarity passes flags the row
    assert model[4].weight.abs().sum() > 0 and not model.training  # the model is untouched


def test_tune_groups_and_pasteable_code():
    assert tune.groups(5, 3) == [(0, 1), (1, 3), (3, None)]
    assert tune.groups(1, 3) == [(0, None)]
    assert tune.groups(2, 3) == [(0, 1), (1, None)]
    chosen = [lrpfx.rules.Flat(), lrpfx.rules.Gamma(0.25), lrpfx.rules.Epsilon(1e-6)]
    namespace: dict = {}
    exec(tune.code(tune.groups(5, 3), chosen), namespace)
    assert isinstance(namespace["composite"], lrpfx.composites.Composite)


def test_tune_finds_a_setting_on_a_small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 16, 3)).eval()
    result = tune.tune(model, torch.rand(8, 1, 4, 4), steps=4, sweeps=1,
                       presets=("epsilon-plus-flat",))
    assert len(result.chosen) == 2 and len(result.tried) >= 8
    assert [row.name for row in result.held_out.rows].count("tuned") == 1


def test_cli_parses_evaluate_and_tune():
    from lrpfx.cli import COMMANDS, build_parser

    args = build_parser().parse_args(["evaluate", "--rules", "epsilon,epsilon-plus", "--n", "5",
                                      "--sanity", "--imputer", "blur"])
    assert (args.command, args.n, args.sanity, args.imputer) == ("evaluate", 5, True, "blur")
    assert build_parser().parse_args(["tune"]).command == "tune" and "tune" in COMMANDS
