"""Execution modes of a quantized model: graph, XLA, MirroredStrategy on two logical CPUs, mixed precision."""

import numpy as np
import pytest
import tensorflow as tf
from keras_models import batches, quantized_cnn, run_python

keras = tf.keras
X = np.concatenate(batches((16, 16, 3), n=4, seed=3))
METHODS = [("symmetric", "uniform"), ("pot", "pot")]


@pytest.fixture(scope="module", params=METHODS, ids=["-".join(m) for m in METHODS])
def model_and_eager(request):
    model = quantized_cnn(*request.param[:1], activation_method=request.param[1])
    return model, model(X).numpy()


def test_graph_mode_output_is_bit_identical_to_eager(model_and_eager):
    model, eager = model_and_eager
    np.testing.assert_array_equal(tf.function(model)(X).numpy(), eager)


def test_xla_output_is_bit_identical_to_eager(model_and_eager):
    model, eager = model_and_eager
    np.testing.assert_array_equal(tf.function(model, jit_compile=True)(X).numpy(), eager)


def test_predict_output_is_bit_identical_to_eager(model_and_eager):
    model, eager = model_and_eager
    np.testing.assert_array_equal(model.predict(X, batch_size=8, verbose=0), eager)


def test_mirrored_strategy_on_two_logical_cpus_is_bit_identical_to_eager(tmp_path):
    model = quantized_cnn()
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", model(X).numpy())
    proc = run_python(f"""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import iqcore
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = iqcore.load_model({str(tmp_path / "m.keras")!r})
        x, y = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "y.npy")!r})
        dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(16))

        @tf.function
        def step(batch):
            return strategy.run(model, args=(batch,))

        outs = []
        for batch in dist:
            outs += [t.numpy() for t in strategy.experimental_local_results(step(batch))]
        got = np.concatenate(outs)
        print("REPLICAS", strategy.num_replicas_in_sync, "PER_BATCH", len(outs) // 2)
        print("MISMATCHES", int(np.count_nonzero(got.view(np.uint32) != y.view(np.uint32))))
    """)
    assert "REPLICAS 2" in proc.stdout and "MISMATCHES 0" in proc.stdout, proc.stdout + proc.stderr[-3000:]


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_model_runs_in_the_policy_compute_dtype(policy):
    y = quantized_cnn(weights_method="pot")(X)
    assert y.dtype == keras.mixed_precision.Policy(policy).compute_dtype and np.all(np.isfinite(y.numpy()))


def test_power_of_two_weights_stay_on_the_grid_in_half_precision(policy):
    wrapper = quantized_cnn(weights_method="pot").get_layer("conv_quantized")
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    half = tf.cast(tf.cast(tf.convert_to_tensor(wrapper.layer.kernel), compute), tf.float32).numpy()
    np.testing.assert_array_equal(wrapper.weights_quantizers["kernel"](half).numpy(), half)


def test_mixed_precision_output_stays_within_three_output_steps_of_float32(policy):
    keras.mixed_precision.set_global_policy("float32")
    want = quantized_cnn(weights_method="pot")(X).numpy()
    keras.mixed_precision.set_global_policy(policy)
    model = quantized_cnn(weights_method="pot")
    got = np.asarray(model(X), np.float32)
    step = model.get_layer("fc_activation").quantizer.grid.scale
    assert np.abs(got - want).max() <= 3 * step
