"""Energy per inference sample: measured with RAPL where the CPU exposes it, otherwise a labelled estimate.

The estimate uses the per-operation energies of Horowitz, "Computing's energy problem (and what we can do
about it)", ISSCC 2014, for a 45 nm process: one multiply and one add per MAC at the artifact's precision,
plus one DRAM read of every weight byte per inference (640 pJ per 32-bit access = 160 pJ per byte). It
ignores activations, caches and static power, so compare estimates with estimates, never with measurements.
The RAPL counter is read by the benchmark worker around its timed loop (``_bench_worker.py``).
"""

from __future__ import annotations

from edgecompress.errors import EdgeCompressError

# precision -> (multiply pJ, add pJ), Horowitz 2014, 45 nm
OP_ENERGY_PJ: dict[str, tuple[float, float]] = {"fp32": (3.7, 0.9), "fp16": (1.1, 0.4), "int8": (0.2, 0.03)}
DRAM_PJ_PER_BYTE = 640.0 / 4

ESTIMATE_SOURCE = "estimate (Horowitz 2014 45nm op-energy table)"
MEASURED_SOURCE = "measured (RAPL)"


def _op_energy(precision: str) -> tuple[float, float]:
    """Table entry for a precision; a variant name (``int8_static``) uses its base type's entry."""
    for key, energies in OP_ENERGY_PJ.items():
        if precision.startswith(key):
            return energies
    raise EdgeCompressError(f"no op-energy entry for precision {precision!r}", where="artifact.precision",
                            fix=f"use a precision that starts with one of: {', '.join(OP_ENERGY_PJ)}")


def energy_per_sample(macs: int, weight_bytes: int, precision: str = "fp32", *, batch: int = 1,
                      measured_mj: float | None = None) -> dict[str, float | str]:
    """Energy of one sample in millijoules and where the number comes from.

    macs: multiply-accumulates of one sample; weight_bytes: bytes of weights read per inference (the artifact
    size is a fair proxy), shared by the ``batch`` samples of one inference; measured_mj: the RAPL reading per
    sample from the benchmark, used as is when given.
    """
    if measured_mj is not None:
        return {"energy_mj": measured_mj, "energy_source": MEASURED_SOURCE}
    mult_pj, add_pj = _op_energy(precision)
    picojoules = macs * (mult_pj + add_pj) + weight_bytes * DRAM_PJ_PER_BYTE / batch
    return {"energy_mj": picojoules * 1e-9, "energy_source": ESTIMATE_SOURCE}
