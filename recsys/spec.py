"""One pipeline spec: a typed, versioned description of a whole ``StyleRecommender``.

A :class:`PipelineSpec` names every choice of a pipeline (the data it reads, the CF
model, candidate sources, the ranker, the encoder, taste profiles, style references,
the styler and the renderer) as JSON-ready dataclasses. The CLI (``stylerec fit
--config pipeline.json --set cf.params.factors=64``), the demo (``configs/demo.json``),
evaluation configs (``"pipeline": "spec.json"``) and saved models all read or write it.

Validation names the key at fault, down to a component's parameters, which are checked
against the signature of the registered factory::

    cf.params.factors: expected int, got 'x'

Relative paths are kept as written (resolved against the working directory).

Examples
--------
>>> spec = PipelineSpec.from_dict({"cf": {"name": "als", "params": {"factors": 32}}})
>>> spec.cf, spec.ranker.name, spec.version
(ComponentSpec(name='als', params={'factors': 32}), 'blend', 1)
>>> apply_overrides(spec.to_dict(), ["cf.params.factors=64"])["cf"]["params"]
{'factors': 64}
>>> PipelineSpec.from_dict({"cf": {"name": "als", "params": {"factors": "x"}}}).validate()
Traceback (most recent call last):
...
recsys.spec.SpecError: cf.params.factors: expected int, got 'x'
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

SPEC_VERSION = 1


class SpecError(ValueError):
    """A pipeline spec that cannot be built; the message starts with the key at fault."""


@dataclass
class ComponentSpec:
    """A registered component: its ``name`` and constructor ``params``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    """Where the data comes from (options of :func:`recsys.interactions.load_interactions`).

    ``item_groups``: a CSV whose ``group_columns`` (item id, group) give each item's
    group, e.g. H&M ``articles.csv`` (``article_id``, ``product_code``), or
    ``"prefix:K"``: items sharing their first K id characters form a group.
    """

    interactions: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    value_col: str | None = None
    weighting: str = "count"
    half_life_days: float | None = None
    time_unit: str | None = None
    date_format: str | None = None
    sep: str | None = None
    header: bool = True
    columns: list[str] | None = None
    encoding: str | None = None
    images: str | None = None
    item_groups: str | None = None
    group_columns: list[str] = field(default_factory=lambda: ["article_id", "product_code"])


@dataclass
class EncoderSpec:
    """The image encoder, its embedding store and the projection of its embeddings."""

    name: str = "efficientnet-lite0"
    params: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    embedding_dim: int | None = 128
    whiten: bool = True


@dataclass
class StyleMatchSpec:
    """The style matcher (used with ``styles``): its descriptor ``encoder`` and the
    encoder's ``encoder_params`` (e.g. ``clip_model`` and ``clip_checkpoint`` of
    :class:`~recsys.aesthetic.AestheticEncoder`), and the
    :class:`~recsys.aesthetic.AestheticMatcher` ``params`` (block weights, hubness
    correction, centroids, ...)."""

    encoder: str = "aesthetic"
    params: dict[str, Any] = field(default_factory=dict)
    encoder_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RendererSpec:
    """Options of :class:`stylers.renderer.Renderer`; ``protect``: the parameters of a
    :class:`stylers.protection.ProtectedStyler` around the styler (``None``: unprotected)."""

    cache_dir: str = "out/renders"
    device: str = "auto"
    batch_size: int = 4
    max_side: int = 768
    style_side: int | None = None
    dtype: str = "auto"
    image_format: str = "png"
    protect: dict[str, Any] | None = None


@dataclass
class PipelineSpec:
    """Every choice of a :class:`~recsys.recommender.StyleRecommender`, JSON round-trippable.

    ``sources`` and ``ranker`` are generic ``{name, params}`` entries so that new
    candidate sources and rankers fit without a schema change. Rankers come from
    :data:`recsys.learned_ranker.RANKERS`: ``learned`` (the default:
    :class:`~recsys.learned_ranker.LearnedRanker`, whose ``params`` may name its
    ``sources``) and ``blend`` (:class:`~recsys.ranker.StyleRanker`, whose
    ``taste_weight`` is the facade's ``blend``). The top-level ``sources`` stays empty:
    the learned ranker's sources are its own parameter.
    """

    version: int = SPEC_VERSION
    data: DataSpec = field(default_factory=DataSpec)
    cf: ComponentSpec = field(default_factory=lambda: ComponentSpec("als"))
    sources: list[ComponentSpec] = field(default_factory=list)
    ranker: ComponentSpec = field(default_factory=lambda: ComponentSpec("learned"))
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    taste: dict[str, Any] = field(default_factory=dict)
    styles: str | None = None
    style_match: StyleMatchSpec = field(default_factory=StyleMatchSpec)
    styler: ComponentSpec | None = None
    renderer: RendererSpec = field(default_factory=RendererSpec)

    # -- JSON -----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineSpec:
        """Parse a JSON-ready mapping; types and keys are checked (:class:`SpecError`)."""
        if not isinstance(data, Mapping):
            raise SpecError(f"spec: expected an object, got {type(data).__name__}")
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(f"version: this stylerec reads pipeline spec version "
                            f"{SPEC_VERSION}, got {version!r}")
        return _convert(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary; ``from_dict(to_dict())`` gives an equal spec."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # -- validation -----------------------------------------------------------

    def validate(self) -> PipelineSpec:
        """Check every component's name and parameters; returns ``self``.

        Imports the registries (and so torch) only for the sections in use.

        Raises
        ------
        SpecError
            Naming the key, e.g. ``encoder.name: unknown encoder 'x'; available: ...``.
        """
        from recsys.cf import CF_MODELS
        from recsys.learned_ranker import RANKERS
        from recsys.sources import SOURCES
        from recsys.taste import TasteModel

        _check_component(self.cf, "cf", CF_MODELS.get)
        if self.sources:
            raise SpecError("sources: name candidate sources in ranker.params.sources "
                            "(the learned ranker's own parameter)")
        _check_component(self.ranker, "ranker", RANKERS.get)
        if self.ranker.name == "learned":
            for i, source in enumerate(self.ranker.params.get("sources") or []):
                _check_component(_convert(ComponentSpec, source, f"ranker.params.sources.{i}"),
                                 f"ranker.params.sources.{i}", SOURCES.get)
        _check_params(TasteModel, self.taste, "taste")
        _group_prefix(self.data.item_groups)  # a malformed "prefix:K" fails here
        if self.data.images is not None:  # the visual stages are built only with images
            from recsys.encoders import ENCODERS

            _check_component(self.encoder, "encoder", ENCODERS.get)
            if self.styles is not None:
                from recsys.aesthetic import AestheticMatcher

                try:
                    factory = ENCODERS.get(self.style_match.encoder)
                except LookupError as err:
                    raise SpecError(f"style_match.encoder: {err}") from None
                _check_params(_signature_owner(factory), self.style_match.encoder_params,
                              "style_match.encoder_params")
                _check_params(AestheticMatcher, self.style_match.params, "style_match.params")
        if self.styler is not None:
            from stylers.protection import ProtectedStyler
            from stylers.registry import STYLERS

            _check_component(self.styler, "styler", STYLERS.get)
            if self.renderer.protect is not None:
                _check_params(ProtectedStyler, self.renderer.protect, "renderer.protect",
                              skip=("styler",))
        return self


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> PipelineSpec:
    """Read a pipeline spec JSON file, apply ``key.path=value`` overrides, validate.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    SpecError
        On bad JSON, a bad override, or an invalid spec (the message names the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline spec not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SpecError(f"{path}: not valid JSON: {err}") from None
    return PipelineSpec.from_dict(apply_overrides(with_defaults(data), overrides)).validate()


def with_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the default of each top-level section it leaves out, so that an
    override such as ``cf.params.factors=8`` lands in a complete section."""
    return {**PipelineSpec().to_dict(), **data}


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b.c=value`` set (value parsed as JSON when it can be;
    a number indexes a list, e.g. ``sources.0.params.k=5``)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set needs KEY.PATH=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, last = key.split(".")
        node: Any = out
        for depth, part in enumerate(parents):
            where = ".".join(parents[:depth + 1])
            if isinstance(node, list):
                node = node[_index(node, part, where)]
            elif isinstance(node, dict):
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                node = child
            else:
                raise SpecError(f"{where}: cannot set a key inside a {type(node).__name__}")
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecError(f"{key}: cannot set a key inside a {type(node).__name__}")
    return out


def _index(items: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise SpecError(f"{where}: not an index of a {len(items)}-item list")
    return int(part)


# -- conversion and type checks ---------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked against the annotation ``tp`` (dataclasses built recursively)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected an object, got {value!r}")
        hints = typing.get_type_hints(tp)
        known = [f.name for f in dataclasses.fields(tp)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise SpecError(f"{_join(path, unknown[0])}: unknown key; known: {', '.join(known)}")
        missing = [f.name for f in dataclasses.fields(tp) if f.name not in value
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SpecError(f"{_join(path, missing[0])}: required")
        return tp(**{k: _convert(hints[k], v, _join(path, k)) for k, v in value.items()})
    return _check_value(tp, value, path)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    origin = typing.get_origin(tp)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _check_value(tp: Any, value: Any, path: str) -> Any:
    """``value`` if it is of type ``tp`` (ints pass for floats, lists for tuples), else
    a :class:`SpecError`; annotations it cannot judge pass unchecked."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _check_value(option, value, path)
            except SpecError:
                continue
        raise SpecError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _convert(tp, value, path)
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str or tp is Path:
        ok = isinstance(value, str)
    elif origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list):
            raise SpecError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_check_value(item, v, f"{path}.{i}") for i, v in enumerate(value)]
    elif origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected an object, got {value!r}")
        return dict(value)
    else:
        return value  # a type a JSON value cannot be checked against (a tensor, a module)
    if not ok:
        raise SpecError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return value


def _signature_owner(factory: Callable[..., Any]) -> Callable[..., Any]:
    """The class whose constructor a factory calls (an encoder preset wraps its class)."""
    if isinstance(factory, functools.partial):
        return next((a for a in factory.args if isinstance(a, type)), factory.func)
    return factory


def _check_component(spec: ComponentSpec, path: str, lookup: Callable[[str], Any]) -> None:
    try:
        factory = lookup(spec.name)
    except LookupError as err:
        raise SpecError(f"{path}.name: {err}") from None
    _check_params(_signature_owner(factory), spec.params, f"{path}.params")


def _check_params(owner: Callable[..., Any], params: Mapping[str, Any], path: str,
                  skip: Sequence[str] = ()) -> None:
    """Check ``params`` against the keyword parameters of ``owner`` (a class: its
    ``__init__`` and those of its bases that it forwards ``**kwargs`` to)."""
    accepted: dict[str, Any] = {}
    open_ended = False
    functions = ([c.__init__ for c in owner.__mro__ if "__init__" in vars(c) and c is not object]
                 if isinstance(owner, type) else [owner])
    for function in functions:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return  # a factory that cannot be introspected is checked when it is built
        try:
            hints = typing.get_type_hints(function)
        except NameError:  # an annotation only importable for type checkers
            hints = {}
        for name, parameter in signature.parameters.items():
            if name != "self" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD,
                                                     parameter.KEYWORD_ONLY):
                accepted.setdefault(name, hints.get(name, Any))
        open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        if not open_ended:
            break  # this constructor forwards nothing further up
    for key, value in params.items():
        if key in skip or (key not in accepted and open_ended):
            continue
        if key not in accepted:
            raise SpecError(f"{path}.{key}: unknown parameter; known: "
                            f"{', '.join(k for k in accepted if k not in skip)}")
        _check_value(accepted[key], value, f"{path}.{key}")


# -- from a spec to a StyleRecommender and back -------------------------------------------


def recommender_arguments(spec: PipelineSpec) -> dict[str, Any]:
    """The :class:`~recsys.recommender.StyleRecommender` constructor arguments of ``spec``
    (all but the renderer)."""
    ranker = dict(spec.ranker.params)
    learned = spec.ranker.name == "learned"
    return {
        "cf_model": spec.cf.name, "cf_params": dict(spec.cf.params),
        "encoder": spec.encoder.name, "encoder_params": dict(spec.encoder.params),
        "cache_dir": spec.encoder.cache_dir, "embedding_dim": spec.encoder.embedding_dim,
        "whiten": spec.encoder.whiten, "taste_params": dict(spec.taste),
        "ranker": spec.ranker.name,
        "blend": 0.5 if learned else ranker.pop("taste_weight", 0.5),
        "ranker_params": None if learned else ranker,
        "learned_params": ranker if learned else None,
        "style_encoder": spec.style_match.encoder,
        "style_params": dict(spec.style_match.params) or None,
        "style_encoder_params": dict(spec.style_match.encoder_params) or None,
    }


def spec_of(model: Any) -> PipelineSpec:
    """The spec of a ``StyleRecommender``: its model sections from its parameters, the
    others (data, styles, styler, renderer) from the spec it was built from, if any.

    An encoder instance is described by its ``name`` and identity ``params``; a loaded
    model fitted with one (and so saved without it) by its saved spec.
    """
    base = getattr(model, "_spec", None) or PipelineSpec()
    encoder = model.encoder
    if isinstance(encoder, str):
        name, params = encoder, dict(model.encoder_params or {})
    elif encoder is None:
        name, params = base.encoder.name, dict(base.encoder.params)
    else:
        name, params = encoder.name, dict(encoder.params)
    return dataclasses.replace(
        base,
        cf=ComponentSpec(model.cf_model, dict(model.cf_params or {})),
        ranker=(ComponentSpec("learned", dict(model.learned_params or {}))
                if model.ranker == "learned" else
                ComponentSpec("blend", {"taste_weight": model.blend,
                                        **(model.ranker_params or {})})),
        encoder=EncoderSpec(name, params,
                            None if model.cache_dir is None else str(model.cache_dir),
                            model.embedding_dim, model.whiten),
        taste=dict(model.taste_params or {}),
        style_match=StyleMatchSpec(
            model.style_encoder if isinstance(model.style_encoder, str)
            else getattr(model.style_encoder, "name", base.style_match.encoder),
            dict(model.style_params or {}), dict(model.style_encoder_params or {})),
    )


def build_renderer(spec: PipelineSpec) -> Any:
    """The :class:`stylers.renderer.Renderer` of ``spec`` (``None`` without a styler)."""
    if spec.styler is None:
        return None
    from stylers.protection import ProtectedStyler
    from stylers.registry import create_styler
    from stylers.renderer import Renderer

    styler = create_styler(spec.styler.name, **spec.styler.params)
    options = spec.renderer
    if options.protect is not None:
        styler = ProtectedStyler(styler, **options.protect)
    return Renderer(styler, options.cache_dir, device=options.device,
                    batch_size=options.batch_size, max_side=options.max_side,
                    style_side=options.style_side, dtype=options.dtype,
                    image_format=options.image_format)


def read_item_groups(path: str | Path, columns: Sequence[str]) -> dict[str, str]:
    """Item id → group from the two ``columns`` of a CSV (rows missing either are dropped)."""
    import pandas as pd

    item_col, group_col = columns
    try:
        frame = pd.read_csv(path, dtype=str, usecols=[item_col, group_col])
    except ValueError as err:
        raise ValueError(f"{path}: needs columns {item_col!r} and {group_col!r} "
                         f"({err})") from None
    frame = frame.dropna()
    return dict(zip(frame[item_col], frame[group_col], strict=True))


def fit_pipeline(spec: PipelineSpec, renderer: Any = None) -> Any:
    """Read ``spec.data`` and fit what it describes.

    With ``data.images``: a :class:`~recsys.recommender.StyleRecommender` (with style
    references when ``styles`` is set); without: the CF model alone.

    Raises
    ------
    SpecError
        When ``data.interactions`` is not set.
    """
    from recsys.interactions import Interactions, load_interactions

    data = spec.validate().data
    if data.interactions is None:
        raise SpecError("data.interactions: required to fit")
    if data.images is None and spec.styles is not None:
        raise SpecError("styles: needs data.images (the full pipeline)")

    def load() -> Interactions:  # after everything that can be checked without the data
        return load_interactions(
            data.interactions, data.user_col, data.item_col, data.time_col, data.value_col,
            weighting=data.weighting, half_life_days=data.half_life_days,
            time_unit=data.time_unit, date_format=data.date_format, sep=data.sep,
            header=data.header, columns=data.columns, encoding=data.encoding)

    if data.images is None:
        from recsys.cf import create_model

        return create_model(spec.cf.name, **spec.cf.params).fit(load())
    from recsys.catalog import Catalog
    from recsys.recommender import StyleRecommender

    catalog = Catalog.from_directory(data.images)
    styles = None if spec.styles is None else Catalog.from_directory(spec.styles)
    model = StyleRecommender.from_params(spec, renderer=renderer)
    prefix = _group_prefix(data.item_groups)
    groups = (None if data.item_groups is None or prefix is not None
              else read_item_groups(data.item_groups, data.group_columns))
    interactions = load()
    if prefix is not None:
        groups = {i: i[:prefix] for i in {*catalog.item_ids, *interactions.item_ids}}
    return model.fit(interactions, catalog, styles, item_groups=groups)


def _group_prefix(item_groups: str | None) -> int | None:
    """K of a ``data.item_groups`` written ``"prefix:K"`` (``None``: not that form)."""
    if item_groups is None or not item_groups.startswith("prefix:"):
        return None
    if not item_groups[7:].isdigit() or int(item_groups[7:]) < 1:
        raise SpecError(f"data.item_groups: write 'prefix:K' with K a whole number >= 1, "
                        f"got {item_groups!r}")
    return int(item_groups[7:])
