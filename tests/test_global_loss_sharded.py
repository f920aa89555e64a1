"""make_global_loss (gather and ring forms) on 8 virtual CPU devices equals the dense loss in
float64: values and gradients for img, txt, τ (and SigLIP's bias), 1-D and 2-D meshes."""

import jax
import losses_numpy_reference as ref
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mzs_jax import losses

HP = {
    "infonce": {},
    "dcl": {},
    "hn_nce": {"beta": 0.6},
    "dhn_nce": {"beta1": 0.4, "beta2": 0.9},
    "cehnc": {"beta1": 0.5, "beta2": 1.5, "adaptive": True},
    "cehnc_fixed": {"beta1": 0.5, "beta2": 1.5, "adaptive": False},
    "cehnc_capped": {"beta1": 0.5, "beta2": 1.5, "adaptive": True, "beta_max": 2.0},
    "siglip": {},
}
MESHES = {  # name -> (mesh shape, axis names, batch axis argument)
    "data8": ((8,), ("data",), "data"),
    "data4_fsdp2": ((4, 2), ("data", "fsdp"), ("data", "fsdp")),
}


@pytest.fixture(scope="module", params=list(MESHES))
def mesh_axis(request):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (virtual) devices")
    shape, names, axis = MESHES[request.param]
    return jax.make_mesh(shape, names), axis


def _pairs(b, d=6, seed=0):
    rng = np.random.default_rng(seed)
    img = ref.unit(rng.normal(size=(b, d)))
    return img, ref.unit(img + 0.7 * rng.normal(size=(b, d)))


def _args(name, img, txt):
    return (img, txt, np.float64(0.2)) + ((np.float64(-1.5),) if name == "siglip" else ())


@pytest.mark.parametrize("form", ["gather", "ring"])
@pytest.mark.parametrize("key", list(HP))
def test_global_loss_equals_the_dense_loss_in_value_and_gradient(mesh_axis, form, key):
    """B = 40 over 8 devices: B_l = 5 rows each; tiles of 3 divide neither B_l nor B."""
    mesh, axis = mesh_axis
    name, hp = key.removesuffix("_fixed").removesuffix("_capped"), HP[key]
    img, txt = _pairs(40)
    with jax.enable_x64(True):
        args = _args(name, img, txt)
        argnums = tuple(range(len(args)))
        dense = lambda *a: losses.get_loss(name)(*a, **hp)
        want = jax.value_and_grad(dense, argnums=argnums)(*args)
        fn = losses.make_global_loss(name, mesh, axis=axis, form=form, block_size=3, **hp)
        got = jax.value_and_grad(fn, argnums=argnums)(*args)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-12, atol=1e-12)
    for g, w, what in zip(got[1], want[1], ("img", "txt", "tau", "bias"), strict=False):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-12, err_msg=what)


@pytest.mark.parametrize("form", ["gather", "ring"])
def test_global_loss_accepts_explicitly_sharded_inputs_and_default_block(mesh_axis, form):
    mesh, axis = mesh_axis
    img, txt = (x.astype(np.float32) for x in _pairs(16))
    rows = P(axis) if isinstance(axis, str) else P(tuple(axis))
    sh = NamedSharding(mesh, rows)
    fn = losses.make_global_loss("cehnc", mesh, axis=axis, form=form, **HP["cehnc"])
    got = jax.jit(fn)(jax.device_put(img, sh), jax.device_put(txt, sh), 0.1)
    want = losses.cehnc(img, txt, 0.1, **HP["cehnc"])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_data_axis_alone_on_a_2d_mesh_still_works():
    """axis="data" on a (4, 2) mesh: rows over data, fsdp replicas repeat the work (allowed)."""
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    img, txt = _pairs(12)
    with jax.enable_x64(True):
        for form in ("gather", "ring"):
            fn = losses.make_global_loss("dcl", mesh, axis="data", form=form, block_size=2)
            np.testing.assert_allclose(
                float(fn(img, txt, 0.3)), float(losses.dcl(img, txt, 0.3)), rtol=1e-12
            )


def test_global_loss_refuses_bad_layouts_and_arguments():
    mesh = jax.make_mesh((8,), ("data",))
    img, txt = _pairs(20)
    with pytest.raises(ValueError, match="not a multiple of mesh axis"):
        losses.make_global_loss("infonce", mesh)(img, txt, 0.1)
    with pytest.raises(ValueError, match="block_size"):
        losses.make_global_loss("infonce", mesh, block_size=0)
    with pytest.raises(ValueError, match="no axis 'model'"):
        losses.make_global_loss("infonce", mesh, axis=("data", "model"))
    with pytest.raises(ValueError, match="global_form"):
        losses.make_global_loss("infonce", mesh, form="allreduce")
    img, txt = _pairs(16)
    with pytest.raises(ValueError, match="learns a logit bias"):
        losses.make_global_loss("siglip", mesh)(img, txt, 0.1)
    with pytest.raises(ValueError, match="takes no logit bias"):
        losses.make_global_loss("infonce", mesh)(img, txt, 0.1, -10.0)


@pytest.mark.parametrize("name", ["infonce", "cehnc", "siglip"])
def test_only_the_gather_form_holds_the_whole_other_side(name):
    """Compiled (not run) at B = 16,384, D = 512 on 8 devices, tiles of 128 (so the tiles are
    small next to B_l × D): the gather form's temporaries hold the gathered (B, D) side; the ring
    form's stay under half of it (docs/losses.md)."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    b, d = 16_384, 512
    x = jax.ShapeDtypeStruct((b, d), np.float32, sharding=NamedSharding(mesh, P("data")))
    t = jax.ShapeDtypeStruct((), np.float32, sharding=NamedSharding(mesh, P()))
    args = (x, x, t, t) if name == "siglip" else (x, x, t)
    temp = {}
    for form in ("gather", "ring"):
        fn = losses.make_global_loss(name, mesh, form=form, block_size=128, **HP[name])
        vg = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
        temp[form] = vg.lower(*args).compile().memory_analysis().temp_size_in_bytes
    side = b * d * 4
    assert temp["gather"] >= side, temp
    assert temp["ring"] < side / 2, temp
