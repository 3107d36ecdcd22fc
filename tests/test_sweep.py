"""The sweep engine: equal to a plain loop, chunking-invariant, no recompilation, saved safely."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj

NET = gj.build(gj.NetConfig(depth=4, width=8, activation="tanh"))


def _probe(params, key):
    x = jax.random.normal(key, (3, 8))
    return {"out": NET.apply(params, x)[:, 0], "w2": jnp.sum(params["hidden"]["W"] ** 2)}


def test_vmapped_sweep_equals_a_plain_loop():
    sigma_w, sigma_b = [0.5, 1.0, 2.0], [0.0, 0.3]
    res = gj.sweep(NET, _probe, seeds=[3, 5], sigma_w=sigma_w, sigma_b=sigma_b, key=11)
    assert res.axes == ("seed", "sigma_w", "sigma_b")
    assert res["out"].shape == (2, 3, 2, 3)
    root = jax.random.key(11)
    for i, seed in enumerate([3, 5]):
        init_key, probe_key = jax.random.split(jax.random.fold_in(root, seed))
        for j, sw in enumerate(sigma_w):
            for k, sb in enumerate(sigma_b):
                params = NET.scale(NET.init_base(init_key), sigma_w=sw, sigma_b=sb)
                expected = _probe(params, probe_key)
                np.testing.assert_allclose(res["out"][i, j, k], expected["out"], rtol=1e-5)
                np.testing.assert_allclose(res["w2"][i, j, k], expected["w2"], rtol=1e-5)


def test_common_random_numbers_make_the_scale_axis_exact():
    res = gj.sweep(NET, _probe, seeds=2, sigma_w=[1.0, 3.0])
    # Same base draw at both scales: the weights' squared norm scales by exactly 9.
    np.testing.assert_allclose(res["w2"][:, 1], 9 * res["w2"][:, 0], rtol=1e-5)


def test_lazy_probe_equals_the_materialised_sweep_and_shares_weights():
    net = gj.build(gj.NetConfig(depth=6, width=32, activation="tanh"))
    lazy = gj.chi1_probe(net, probes=4)
    assert lazy.lazy_scales
    plain = lambda params, key: lazy(params, key)  # a plain function: materialised params
    kwargs = dict(seeds=2, sigma_w=[0.8, 1.0, 1.5], sigma_b=[0.0, 0.4], progress=False)
    a = gj.sweep(net, lazy, **kwargs)
    b = gj.sweep(net, plain, **kwargs)
    np.testing.assert_allclose(a["mean_sq"], b["mean_sq"], rtol=2e-5)
    # Shared weights: a lazy chunk's memory grows far more slowly with its scale count.
    from gradjax.measure.probes import as_probe
    from gradjax.sweeps.engine import _memory_model

    lazy_model, plain_model = (_memory_model(net, as_probe(p), "float32") for p in (lazy, plain))
    assert lazy_model.total.per_point < plain_model.total.per_point
    assert lazy_model.total.per_seed > 0


def test_two_part_probe_equals_calling_it_per_network():
    net = gj.build(gj.NetConfig(depth=4, width=16, activation="tanh"))
    probe = gj.probes.spectrum_probe(net)  # Jacobians per network, SVDs per chunk
    res = gj.sweep(net, probe, seeds=[2], sigma_w=[0.7, 1.9], key=5, progress=False)
    init_key, probe_key = jax.random.split(jax.random.fold_in(jax.random.key(5), 2))
    for j, sw in enumerate([0.7, 1.9]):
        params = net.scale(net.init_base(init_key), sigma_w=sw)  # materialised weights
        direct = probe(params, probe_key)
        np.testing.assert_allclose(res["hidden.sigma_max"][0, j], direct["hidden"].sigma_max, 1e-5)
        np.testing.assert_allclose(res["first.mean_sq"][0, j], direct["first"].mean_sq, 1e-5)


@pytest.mark.parametrize(
    "probe, match",
    [
        (None, "probe=None"),
        (gj.probes.Probe(per_network=None), "probe.per_network"),
        (gj.probes.Probe(per_network=_probe, finalize=3), "probe.finalize"),
    ],
)
def test_a_probe_that_is_not_one_is_refused(probe, match):
    with pytest.raises(gj.GradjaxInputError, match=match):
        gj.sweep(NET, probe, seeds=1, sigma_w=[1.0], progress=False)


def test_memory_budget_and_devices_do_not_change_a_single_bit():
    # A chaotic tanh network (sigma_w = 2.5 at depth 12): rounding differences between
    # differently batched kernels would grow to visible differences in gradient norms and
    # condition numbers.
    net = gj.build(gj.NetConfig(depth=12, width=24, activation="tanh"))
    probe = gj.probes.layer_gradient_and_spectrum_probe(net, batch=4)
    kw = dict(seeds=3, sigma_w=[0.7, 1.4, 2.5], progress=False)
    ref = gj.sweep(net, probe, **kw)
    runs = [
        gj.sweep(net, probe, memory_budget_mb=1e-3, **kw),  # one seed per chunk
        gj.sweep(net, probe, chunk=(2, 1), **kw),  # padded last chunk
        gj.sweep(net, probe, devices=2, **kw),  # tiles over two devices
        gj.sweep(net, probe, devices=4, chunk=(1, 3), **kw),  # three devices idle
    ]
    assert ref.meta["chunk"] == [3, 3] and runs[0].meta["chunk"] == [1, 3]
    for run in runs:
        for name in ref.names():
            np.testing.assert_array_equal(run[name], ref[name], err_msg=name)
    # The result is not degenerate: the condition numbers span orders of magnitude.
    cond = ref["spectra.hidden.condition"]
    assert np.all(np.isfinite(cond)) and cond.max() / cond.min() > 10


def test_explicit_chunks_are_whole_tiles():
    res = gj.sweep(NET, _probe, seeds=5, sigma_w=[0.5, 1.0, 1.5], chunk=(2, 2), progress=False)
    assert res.meta["tile"] == [1, 3] and res.meta["chunk"] == [2, 3]


def test_cpu_tiles_keep_their_largest_array_under_the_allocator_threshold():
    from gradjax.measure.probes import as_probe
    from gradjax.sweeps.engine import _CPU_REUSED_BUFFER_BYTES, _memory_model, _tile_scales

    net = gj.build(gj.NetConfig(depth=9, width=256, activation="tanh"))
    probe = as_probe(gj.probes.spectrum_probe(net))
    model = _memory_model(net, probe, "float32")
    # The largest output is the hidden Jacobians: (depth - 1) float32 w x w per network.
    assert model.largest_output(1, 3) == 3 * 8 * 256**2 * 4
    tile = _tile_scales(model, 40, cpu=True)
    assert model.largest_output(1, tile) <= _CPU_REUSED_BUFFER_BYTES
    # At most 16 networks of 2 MiB of Jacobians each, evened out over the tiles:
    # the last tile is padded by fewer points than there are tiles.
    assert tile <= _CPU_REUSED_BUFFER_BYTES // (8 * 256**2 * 4)
    n_tiles = -(-40 // tile)
    assert n_tiles * tile - 40 < n_tiles
    assert _tile_scales(model, 3, cpu=True) == 3
    # On an accelerator the CPU allocator's rule does not apply: larger tiles.
    assert _tile_scales(model, 40, cpu=False) > tile


def test_default_budget_comes_from_the_device():
    from gradjax.sweeps.engine import _budget_bytes

    class FakeGpu:
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 80 * 2**30}

    assert _budget_bytes(None, [FakeGpu()]) == 40 * 2**30  # half of what it reports
    assert _budget_bytes(None, jax.devices()[:1]) == 1024 * 2**20  # a CPU reports nothing
    assert _budget_bytes(64.0, [FakeGpu()]) == 64 * 2**20  # the user's budget wins


def test_sizes_that_cannot_fit_are_refused_before_anything_is_written(tmp_path):
    huge = gj.build(gj.NetConfig(depth=32, width=1_000_000))
    # 32 float32 10^6 x 10^6 weight matrices (input is width-sized too), twice (base and
    # scaled): 2.56e14 bytes = 238418.8 GiB.
    with pytest.raises(
        gj.GradjaxInputError, match=r"one network needs 238418\.8 GiB for one chunk; the limit is"
    ):
        gj.sweep(huge, gj.probes.gradient_probe(huge), seeds=1, out_dir=tmp_path / "a")
    # 10^7 seeds x 1000 grid points x 16 bytes of results: 1.6e11 bytes.
    with pytest.raises(gj.GradjaxInputError, match=r"seeds=10000000 x 1000 .* needs 149\.0 GiB"):
        gj.sweep(
            NET, _probe, seeds=10_000_000, sigma_w=np.linspace(0.1, 3, 1000), out_dir=tmp_path / "b"
        )
    assert not list(tmp_path.iterdir())


def test_second_sweep_does_not_recompile():
    traces = []

    def probe(params, key):
        traces.append(1)  # runs only while tracing
        return jnp.sum(NET.apply(params, jax.random.normal(key, (2, 8))))

    gj.sweep(NET, probe, seeds=3, sigma_w=[1.0, 2.0], chunk=(3, 2))
    n = len(traces)
    gj.sweep(NET, probe, seeds=3, sigma_w=[0.7, 1.3], chunk=(3, 2), key=5)
    assert len(traces) == n


def test_save_and_load_round_trip(tmp_path):
    res = gj.sweep(NET, gj.probes.gradient_probe(NET, batch=4), seeds=2, sigma_w=[1.0, 2.0])
    res.save(tmp_path / "out")
    back = gj.SweepResult.load(tmp_path / "out")
    assert back.axes == res.axes and back.names() == res.names()
    for name in res.names():
        np.testing.assert_array_equal(back[name], res[name])
    np.testing.assert_array_equal(back.coords["sigma_w"], [1.0, 2.0])
    assert back.meta["net"]["depth"] == 4
    assert not list((tmp_path / "out").glob("*.tmp"))  # atomic writes leave no debris


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seeds": 0}, "seeds=0"),
        ({"seeds": [1.5]}, "seeds="),
        ({"sigma_w": [-1.0]}, "sigma_w="),
        ({"sigma_w": []}, "sigma_w="),
        ({"sigma_b": [float("nan")]}, "sigma_b="),
        ({"memory_budget_mb": 0}, "memory_budget_mb=0"),
    ],
)
def test_bad_sweep_arguments(kwargs, match):
    with pytest.raises(gj.GradjaxInputError, match=match):
        gj.sweep(NET, _probe, **kwargs)


def test_missing_name_lists_the_names():
    # The sweep of test_common_random_numbers_make_the_scale_axis_exact: its program is reused.
    res = gj.sweep(NET, _probe, seeds=2, sigma_w=[1.0, 3.0])
    with pytest.raises(KeyError, match="names: out, w2"):
        res["nope"]
