"""What a sensitivity analysis differentiates or samples: a model output, an endpoint,
or a user function of the parameters; the checks made before any simulation."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from ..ode._model import Model
from ..solve._simulate import check_times


def is_model(f) -> bool:
    return isinstance(f, Model)


def check_target(model, where: str) -> None:
    if not (is_model(model) or callable(model)):
        raise TypeError(
            f"{where}: the first argument must be a twinjax Model or a function "
            f"f(params: dict) -> array; got {type(model).__name__}"
        )


def check_names(names, allowed, what: str, where: str) -> None:
    unknown = [k for k in names if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown {what} {unknown}; allowed: {list(allowed)}")


def params_dict(params) -> dict:
    """``params`` as a plain dict: a Mapping, a population ``Cohort`` or None."""
    if params is None:
        return {}
    if hasattr(params, "params") and not isinstance(params, Mapping):  # a Cohort
        params = params.params
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict {{name: value}} or a Cohort, got {type(params).__name__}"
        )
    return dict(params)


def quantity_spec(model, times, output, endpoint, where: str, *, differentiable: bool):
    """Check ``output`` / ``endpoint`` against the model and times (before any
    simulation) and return ``(name, ts, endpoint_or_None, output_name_or_None)``."""
    if not is_model(model):
        if output is not None or endpoint is not None or times is not None:
            raise ValueError(
                f"{where}: output=, endpoint= and times= are for a Model; a function "
                "f(params) returns the quantity itself"
            )
        return getattr(model, "__name__", "f"), None, None, None
    if times is None:
        raise ValueError(f"{where}: a Model needs save times, e.g. times=jnp.linspace(0, 24, 97)")
    ts = np.asarray(check_times(times, np.float64))
    if ts.ndim != 1:
        raise ValueError(f"{where}: times must be one (T,) grid shared by every sample")
    names = [*model.output_names, *model.state_names]
    if endpoint is not None and output is not None:
        raise ValueError(f"{where}: give output= or endpoint=, not both")
    if endpoint is None and output is None:
        raise ValueError(
            f"{where}: say what to analyse: output= (one of {names}) or endpoint= (a "
            "twinjax.trial.Endpoint or a function fn(times, outputs) -> (N,))"
        )
    if output is not None:
        if output not in names:
            raise ValueError(
                f"{where}: unknown output {output!r}; the model's outputs and states are {names}"
            )
        return output, ts, None, output
    from ..trial._check import SpecError
    from ..trial._endpoint_kinds import SMOOTH_KINDS
    from ..trial._endpoints import Endpoint

    if isinstance(endpoint, Endpoint):
        problems = endpoint.problems(names, float(ts[-1]))
        if problems:
            raise SpecError(problems)
        # the kinds without a derivative (tmax, responder, safety, time_in_range) are
        # piecewise constant in the parameters
        if differentiable and not endpoint.kind.smooth:
            raise ValueError(
                f"{where}: endpoint {endpoint.name!r} of kind {endpoint.kind.name!r} is piecewise "
                "constant in the parameters (its derivative is zero almost everywhere); local "
                f"sensitivities need one of {list(SMOOTH_KINDS)} (use sobol for the others)"
            )
        return endpoint.name, ts, endpoint, None
    if callable(endpoint):
        return getattr(endpoint, "__name__", "endpoint"), ts, endpoint, None
    raise TypeError(
        f"{where}: endpoint must be a twinjax.trial.Endpoint or a function "
        f"fn(times, outputs) -> (N,); got {type(endpoint).__name__}"
    )


def endpoint_values(endpoint, ts: np.ndarray, outputs: Mapping, xp=jnp):
    """Per-sample endpoint values ``(N,)`` from ``outputs {name: (N, T)}``.

    For a :class:`~twinjax.trial.Endpoint` this is ``Endpoint.compute`` written with
    ``xp`` (``jax.numpy`` so that it can be differentiated, or ``numpy``); the save
    grid ``ts`` is concrete, so windows and interpolation weights are constants.
    A function ``fn(times, outputs)`` is called as it is.
    """
    from ..trial._endpoint_kinds import Custom
    from ..trial._endpoints import Endpoint

    if not isinstance(endpoint, Endpoint):
        return endpoint(ts, outputs)
    if isinstance(endpoint.kind, Custom):
        return endpoint.fn(ts, outputs)  # type: ignore[misc]
    if xp is np:  # the trial's own computation, every kind
        return np.asarray(endpoint.compute(ts, {k: np.asarray(v) for k, v in outputs.items()}))
    return endpoint.kind.compute(endpoint, ts, outputs, xp)  # a smooth kind (quantity_spec)


def model_outputs(result) -> dict:
    """Outputs and states of a Result in one dict (outputs win a name clash)."""
    return {**result.states, **result.outputs}


def is_power_of_two(n) -> bool:
    return bool(isinstance(n, (int, np.integer)) and n >= 1 and (int(n) & (int(n) - 1)) == 0)


def check_bounds(bounds, model, where: str) -> dict[str, tuple[float, float]]:
    """``{name: (lower, upper)}`` checked: known names (for a Model), finite numbers,
    lower < upper, inside the parameter's admissible interval. Every problem at once."""
    if not isinstance(bounds, Mapping) or not bounds:
        raise ValueError(
            f"{where}: bounds must be a non-empty dict {{name: (lower, upper)}}, got {bounds!r}"
        )
    if is_model(model):
        check_names(bounds, model.param_names, "parameter(s) in bounds", where)
    out, problems = {}, []
    for name, b in bounds.items():
        try:
            lo, hi = (float(x) for x in b)
        except (TypeError, ValueError):
            problems.append(f"bounds[{name!r}] must be (lower, upper), got {b!r}")
            continue
        if not (math.isfinite(lo) and math.isfinite(hi)):
            problems.append(f"bounds[{name!r}] = ({lo}, {hi}) must be finite")
            continue
        if not lo < hi:
            problems.append(f"bounds[{name!r}] = ({lo}, {hi}): lower must be < upper")
            continue
        if is_model(model):
            q = model.param(name)
            for v in (lo, hi):
                err = q.bound_error(v)
                if err:
                    problems.append(f"bounds[{name!r}]: {v} {err}")
        out[name] = (lo, hi)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return out


FunctionOfParams = Callable[[dict], object]
