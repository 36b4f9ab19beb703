"""Named model constructors, so trial specifications and the CLI can refer to models."""

from __future__ import annotations

from collections.abc import Callable

_REGISTRY: dict[str, tuple[Callable, str]] = {}


def register(name: str, factory: Callable, doc: str = "") -> None:
    """Register ``factory()`` under ``name`` (used by TOML specs and ``twinjax models``)."""
    _REGISTRY[name] = (factory, doc)


def get_model(name: str):
    """Build the registered model ``name``.

    Raises:
        ValueError: an unknown name, listing the registered ones.
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(_REGISTRY)}")
    return _REGISTRY[name][0]()


def registered() -> dict[str, str]:
    """``{name: description}`` of every registered model."""
    _load_builtin()
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


_LOADED = False


def _load_builtin():
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from ..ode import Link, couple
    from . import pd, pk

    register("pk1_iv", lambda: pk.one_compartment(), "1-compartment PK, IV")
    register("pk1_oral", lambda: pk.one_compartment("first_order"), "1-compartment PK, oral")
    register("pk2_iv", lambda: pk.two_compartment(), "2-compartment PK, IV")
    register("pk2_oral", lambda: pk.two_compartment("first_order"), "2-compartment PK, oral")
    register("pk3_iv", lambda: pk.three_compartment(), "3-compartment PK, IV")
    register(
        "pkpd_idr1",
        lambda: couple(
            {"pk": pk.two_compartment("first_order"), "pd": pd.IndirectResponse(1)},
            [Link("pk.C", "pd.C")],
        ),
        "2-compartment oral PK driving a Jusko type-1 indirect response (inhibited production)",
    )
    register(
        "pkpd_idr3",
        lambda: couple(
            {"pk": pk.two_compartment("first_order"), "pd": pd.IndirectResponse(3)},
            [Link("pk.C", "pd.C")],
        ),
        "2-compartment oral PK driving a Jusko type-3 indirect response (stimulated production)",
    )
    register(
        "pkpd_emax",
        lambda: couple(
            {"pk": pk.one_compartment("first_order"), "pd": pd.DirectEmax(sigmoid=True)},
            [Link("pk.C", "pd.C")],
        ),
        "1-compartment oral PK with a direct sigmoid Emax effect",
    )
    _register_organ_models()


def _register_organ_models():
    """The organ models that virtual-trial specifications refer to by name."""
    from ..ode import Emax, Link
    from . import pk

    def pk_circulation():
        from ._multiscale import QuasiStaticTwin

        return QuasiStaticTwin(
            pk.one_compartment("first_order"),
            [Link("pk.C", "circ.R_AR_SYS", Emax(), {"Emax": -0.3, "EC50": 0.05}, name="drug")],
        )

    register(
        "pk_circulation",
        pk_circulation,
        "1-compartment oral PK (h) lowering the systemic arterial resistance of the Regazzoni "
        "circulation (s) by an Emax link (drug.Emax, drug.EC50), quasi-static: per-beat "
        "circ.MAP, SBP, DBP, SV, EF, CO, EDV, ESV, HR at the trial's beat times",
    )

    def circulation():
        from .circulation import Circulation

        return Circulation()

    register("circulation", circulation, "closed-loop 0-D circulation (Regazzoni 2022), s")

    def pbpk():
        from .pbpk import MinimalPBPK

        return MinimalPBPK()

    register(
        "pbpk",
        pbpk,
        "minimal PBPK, well-stirred liver, Child-Pugh multipliers (f_Qpv, f_Qha, f_CO, f_liver, "
        "f_alb); oral doses to lumen, IV to ven; h",
    )

    def uva_padova():
        from .glucose import UvaPadova

        return UvaPadova()

    register(
        "uva_padova",
        uva_padova,
        "UVA/Padova T1D model (adult#001 defaults), basal insulin infused; meals: doses of mg "
        "glucose into qsto1 with a rate; insulin boluses: pmol/kg into isc1; min",
    )

    def bergman():
        from .glucose import MinimalModel

        return MinimalModel()

    register("bergman_minimal", bergman, "Bergman minimal model with insulin kinetics; min")

    def cipaord():
        from .ep import CiPAORd

        return CiPAORd()

    register(
        "cipaord",
        cipaord,
        "CiPAORdv1.0 (ORd 2011 + dynamic hERG drug binding, Li 2017), endo, BCL 2000 ms; ms. "
        "Pace with twinjax.models.ep.pace_cipa",
    )
