# SPDX-License-Identifier: BSD-3-Clause
"""`LatentSpace`: the registry of models and their weights."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._training.config import (
    TrainingResult,
    resolve_config,
)
from ._training.matching import matched_data
from ._training.fitting import INTERRUPTED, evaluate_loss, fit
from ._exceptions import InvalidParameterError
from ._model import (
    Snapshot,
    kept_pair_maps,
    lookup,
    published,
    refusal,
    xavier,
)
from ._validation import (
    as_rows,
    is_dask_array,
    check_out,
    check_dim,
    check_dtype,
    check_name,
    check_seed,
)

if TYPE_CHECKING:
    from ._training.config import ProjectionConfig
    from ._search.exact_index import GalleryIndex
    from ._search.scoring import SearchResult
    from ._typing import Data, FloatArray, Path, PathOrFile
    from .metrics import Evaluation

__all__ = ["LatentSpace"]

class LatentSpace:
    """A shared latent space into which registered models project.

    Each model ``m`` of input width ``d_m`` has a projection ``P_m`` (``d_m x
    dim``) into the space and a reconstruction ``R_m`` (``dim x d_m``) out of it.

    Parameters
    ----------
    dim : int
        The latent dimension ``k``.
    dtype : {"float64", "float32"}, default="float64"
        Precision of the weights and of every output.
    seed : int or None, default=42
        Seed of the generator that initialises weights at registration: the
        same seed and the same registrations give bit-identical weights.

    Notes
    -----
    `project`, `retrieve`, `translate`, `weights` and the properties may be
    called from any number of threads, also while a model trains: they read
    an immutable snapshot of the weights, which training replaces at once
    when it succeeds. Writers (`register`, `train_projections`) are
    serialised by a lock held only while the registry changes.
    """

    def __init__(
        self, dim: int, *, dtype: DTypeLike = "float64", seed: int | None = 42
    ) -> None:
        dim = check_dim("dim", dim)
        rng = np.random.default_rng(check_seed(seed))
        self._install(check_dtype(dtype), Snapshot(dim, {}, rng))

    def _install(self, dtype: np.dtype[Any], snapshot: Snapshot) -> None:
        """Set up a new space (or a bare one, when loading or unpickling) of
        ``dtype`` holding ``snapshot``."""
        self._dtype = dtype
        self._snapshot = snapshot
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        snapshot = self._snapshot
        models = ", ".join(f"{n!r}: {m.input_dim}" for n, m in snapshot.models.items())
        return (
            f"LatentSpace(dim={snapshot.dim}, dtype={self._dtype.name!r}, "
            f"models={{{models}}})"
        )

    @property
    def dim(self) -> int:
        """The latent dimension."""
        return self._snapshot.dim

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype of weights and outputs."""
        return self._dtype

    @property
    def models(self) -> dict[str, int]:
        """Registered models, name to input width, in registration order."""
        return {name: m.input_dim for name, m in self._snapshot.models.items()}

    def _model(self, name):
        return lookup(self._snapshot.models, name)

    def register(self, name: str, input_dim: int, *, replace: bool = False) -> None:
        """Add a model with Xavier-initialised weights.

        Parameters
        ----------
        name : str
            The model's name.
        input_dim : int
            Width ``d`` of the model's feature vectors.
        replace : bool, default=False
            Allow replacing a registered model (its weights are lost).

        Raises
        ------
        ValueError
            If ``name`` is registered and ``replace`` is false, or a value is
            out of range.
        """
        check_name(name)
        input_dim = check_dim("input_dim", input_dim)
        with self._lock:
            snapshot = self._snapshot
            old = snapshot.models.get(name)
            if old is not None and not replace:
                raise ValueError(
                    f"model {name!r} is already registered (input_dim="
                    f"{old.input_dim}); pass replace=True to overwrite its weights"
                )
            # Drawn from a copy: a failed or interrupted registration leaves
            # the generator as it was.
            rng = copy.deepcopy(snapshot.rng)
            model = xavier(rng, input_dim, snapshot.dim, self._dtype)
            models = {**snapshot.models, name: model}
            self._snapshot = Snapshot(
                snapshot.dim, models, rng,
                pair_maps=kept_pair_maps(snapshot.pair_maps, models),
            )

    def _apply(self, affine_map, values, name, what, out=None):
        """``affine_map(values, out)``, converting ``values`` or explaining why not;
        lazily, block by block, if ``values`` is a Dask array (no ``out``)."""
        if is_dask_array(values):
            if out is not None:
                raise InvalidParameterError(
                    f"out cannot receive the {what} of a Dask array (the result "
                    "is a Dask array); call compute() on the result instead"
                )
            from . import _dask

            return _dask.apply(affine_map, values, name, what, self._dtype)
        W = affine_map.W
        x = as_rows(values, len(W), self._dtype, f"{what} for model {name!r}")
        if out is not None:
            check_out(out, x.shape[:-1] + W.shape[1:], self._dtype)
        result = affine_map(x, out)
        if result is None:
            # Decide on a private copy: another thread may be changing x.
            x = np.array(x)
            result = affine_map(x, out)
            if result is None:
                raise refusal(x, what, name, self._dtype)
        return result

    def project(
        self, name: str, features: ArrayLike, *, out: FloatArray | None = None
    ) -> FloatArray:
        """Map features of model ``name`` into the space: ``(x - mu) @ P``.

        Parameters
        ----------
        name : str
        features : array-like of shape (d,) or (n, d)
            A Dask array gives a Dask array: lazy, computed block by block of
            rows with the weights of this call (values are checked then).
        out : ndarray of shape (k,) or (n, k), optional
            C-contiguous, writeable array of the space's dtype that receives
            the result; it may overlap ``features`` (even be it). A call that
            raises leaves it as it was, except when the result overflows the
            dtype: then it holds unspecified values. Not for a Dask input.

        Returns
        -------
        ndarray of shape (k,) or (n, k), in the space's dtype

        Raises
        ------
        KeyError
            If ``name`` is not registered.
        ValueError
            If the shape is wrong or the input holds NaN or Inf.
        TypeError
            If the input is not numeric.
        """
        # The lookup is inlined: a helper call is a fair part of the Python
        # cost of a one-vector call.
        try:
            affine_map = self._snapshot.models[name].project
        except (KeyError, TypeError):
            affine_map = self._model(name).project  # raises UnknownModelError
        result = affine_map(features, out)  # None unless valid arrays of our dtype
        if result is None:
            return self._apply(affine_map, features, name, "features", out)
        return result

    def retrieve(
        self, name: str, latent: ArrayLike, *, out: FloatArray | None = None
    ) -> FloatArray:
        """Map latent vectors back into model ``name``'s space: ``z @ R + mu``.

        Parameters
        ----------
        name : str
        latent : array-like of shape (k,) or (n, k)
            Or a Dask array, as for `project`.
        out : ndarray of shape (d,) or (n, d), optional
            As for `project`.

        Returns
        -------
        ndarray of shape (d,) or (n, d), in the space's dtype

        Raises
        ------
        KeyError, ValueError, TypeError
            As for `project`.
        """
        try:
            affine_map = self._snapshot.models[name].retrieve
        except (KeyError, TypeError):
            affine_map = self._model(name).retrieve  # raises UnknownModelError
        result = affine_map(latent, out)
        if result is None:
            return self._apply(affine_map, latent, name, "latent", out)
        return result

    def translate(
        self, source: str, target: str, features: ArrayLike, *,
        out: FloatArray | None = None,
    ) -> FloatArray:
        """``retrieve(target, project(source, features))``, from one snapshot.

        Parameters
        ----------
        source, target : str
        features : array-like of shape (d_source,) or (n, d_source)
            Or a Dask array, as for `project`.
        out : ndarray of shape (d_target,) or (n, d_target), optional
            As for `project`.

        Returns
        -------
        ndarray of shape (d_target,) or (n, d_target)
        """
        models = self._snapshot.models
        src, dst = lookup(models, source), lookup(models, target)
        latent = src.project(features)
        if latent is None:
            latent = self._apply(src.project, features, source, "features")
        result = dst.retrieve(latent, out)
        if result is None:
            return self._apply(dst.retrieve, latent, target, "latent", out)
        return result

    def weights(self, name: str) -> tuple[FloatArray, FloatArray]:
        """``(P, R)`` of model ``name``, shapes (d, k) and (k, d).

        Read-only views of immutable memory (their ``writeable`` flag cannot
        be set): copy them (``P.copy()``) to get arrays to modify.
        """
        model = self._model(name)
        return model.projection, model.reconstruction

    def offset(self, name: str) -> FloatArray | None:
        """The input offset ``mu`` of model ``name`` (read-only, as `weights`),
        or None."""
        return self._model(name).offset

    def loss(
        self, data: Data, alignment_weight: float = 1.0, *,
        observed: Mapping[str, ArrayLike] | None = None,
        objective: str = "reference", regularization: float | str = "auto",
    ) -> float:
        """The mean per-sample loss of ``objective`` on aligned data.

        Parameters
        ----------
        data : mapping of str to array-like of shape (n, d_m)
            Aligned samples of one or more registered models (two or more
            for the whitened objective).
        alignment_weight : float, default=1.0
        observed : mapping of str to bool array-like of shape (n,), optional
            Missing views, as for `train_projections`: a sample counts for the
            models that observed it, about the mean of their latents.
        objective : {"reference", "whitened"}, default="reference"
            "reference": the Go package's ``L / n`` (``docs/maths.md``).
            "whitened": the well-posed variant that the closed form and the
            gradient solvers report in `TrainingResult` (by default): on the
            data a space was trained on, with the same ``regularization``, it
            equals that result's ``final_loss``.
        regularization : "auto" or float, default="auto"
            The ridge of the whitened objective (ignored by "reference").

        Returns
        -------
        float
        """
        return evaluate_loss(self._snapshot.models, self._dtype, data,
                             alignment_weight, observed, objective, regularization)

    def train_projections(
        self,
        data: Data | Iterable[Data] | None,
        config: ProjectionConfig | None = None,
        *,
        observed: Mapping[str, ArrayLike] | None = None,
        unpaired: Data | None = None,
        frozen: Iterable[str] = (),
        refine: bool = False,
        **overrides: Any,
    ) -> TrainingResult:
        """Learn the projections and reconstructions of the models in ``data``.

        Runs ``config.solver`` (by default the closed form, "cca"; "sgd" is
        the Go package's reference optimiser, docs/maths.md) on copies of the
        weights and publishes them all at once if it succeeds; on any error,
        divergence, interrupt or exception from the callback the space is
        left exactly as it was. "cca" and the whitened objective also set
        every trained model's offset (the data means), see
        `ProjectionConfig`.

        Parameters
        ----------
        data : mapping of str to array-like of shape (n, d_m), or iterable of such mappings
            Aligned samples (row ``i`` of every array is the same item) of at
            least two registered models (None, with ``refine=True``: none). The arrays may be memory-mapped
            (read a chunk at a time by "cca" and "lbfgs") or Dask arrays (the
            statistics of "cca" and "lbfgs" are then a Dask reduction, which
            runs on a ``dask.distributed`` cluster if one is active; the
            other solvers load the samples). An iterable of mappings is a
            stream of chunks of rows, read once, for "cca" and "lbfgs": the
            models of the first chunk are those trained, and a model missing
            from a chunk did not observe its rows. A generator is closed when
            training ends, even if it fails (reading it again is refused).
        config : ProjectionConfig, optional
            Defaults to ``ProjectionConfig()``.
        observed : mapping of str to bool array-like of shape (n,), optional
            Missing views: which samples a model observed (models not named
            observed all). Rows a model did not observe are ignored (they may
            hold NaN); a sample's consensus is the mean latent of the models
            that observed it, and a sample seen by one model still trains its
            reconstruction. Every solver supports it.
        unpaired : mapping of str to array-like of shape (n_m, d_m), optional
            Rows of a model with no known partner in ``data`` (each model its
            own number): samples that model alone observed. They improve each
            model's own statistics (its mean, its covariance, its
            reconstruction) and never its alignment with another model,
            unless ``refine=True``.
        frozen : iterable of str, default=()
            Models of ``data`` whose weights and offsets stay bit-identical:
            the others learn to land on the space the frozen ones define
            (knowledge transfer to a new model). The objective is then
            "reference" and the free models are centred (their offsets are
            their data means); "cca" solves for them in closed form (a ridge
            regression on the mean latent of the frozen models).
        refine : bool, default=False
            Find correspondences between the ``unpaired`` rows of two models
            (in memory, at most 20,000 x 20,000 of them) and train on them as
            pairs too. From 100 or more known pairs in ``data``: rounds of
            self-learning (mutual nearest neighbours under CSLS, refitted),
            kept only if pairs planted among the unpaired rows rank
            significantly better. From fewer, or none (``data=None``):
            alignment with no known pair, from the shape of each model's own
            similarities; it works between models of the same kind on
            thousands of shared items, and raises `AlignmentNotFoundError`
            rather than return an unaligned space. ``result.matching`` says
            what was found. See docs/matching.md.
        **overrides
            `ProjectionConfig` fields that replace those of ``config``.

        Returns
        -------
        TrainingResult

        Raises
        ------
        KeyError
            If a model is not registered.
        ValueError, TypeError
            If the data or the configuration is invalid (nothing changes).
        TrainingDivergedError
            If the loss or the weights became non-finite (nothing changes).
        RuntimeError
            If another writer replaced a trained model meanwhile (nothing changes).
        AlignmentNotFoundError
            If ``refine=True`` with no known pair found no correspondence
            (nothing changes).
        ImportError
            If ``progress=True`` and tqdm is not installed (before any work).

        Warns
        -----
        ConvergenceWarning
            If a ``tol`` was set (or is the solver's default) and the solver ran
            out of iterations first; issued before the weights are published.
        """
        started = time.perf_counter()
        config = resolve_config(config, overrides)
        matching = None
        if refine is not False:
            if refine is not True:
                raise InvalidParameterError(f"refine must be True or False, got {refine!r}")
            if observed is not None or frozen:
                raise InvalidParameterError(
                    "refine=True takes neither observed= nor frozen="
                )
            data, unpaired, matching = matched_data(
                self, data, unpaired, self._dtype,
                self.dim if config.latent_dim is None else config.latent_dim,
                config.regularization,
            )
        snapshot = self._snapshot
        run = fit(
            snapshot, self._dtype, data, config, observed=observed,
            unpaired=unpaired, frozen=frozen, matching=matching, started=started,
        )
        # Everything is ready before publishing, the last step: an interrupt
        # before it changes nothing, and after it only returns.
        try:
            with self._lock:
                self._snapshot = published(
                    self._snapshot, snapshot, run, config, self._dtype
                )
            return run.result
        except KeyboardInterrupt as exc:
            models = self._snapshot.models
            if any(models.get(name) is model for name, model in run.trained.items()):
                exc.add_note(
                    "latentspace: interrupted after training finished; its "
                    "weights are published"
                )
            else:
                exc.add_note(INTERRUPTED)
            raise

    # Persistence, pickling, search and evaluation: thin wrappers over the
    # modules _files.space_file, _search and metrics.

    def save(
        self, path: PathOrFile, *,
        config: ProjectionConfig | TrainingResult | dict[str, Any] | None = None,
        key: bytes | None = None,
    ) -> None:
        """Write the space to one ``.npz`` file at ``path``, atomically.

        The file holds a JSON header (format version, dtype, dim, the models
        in registration order, the random generator's state, ``config``) and
        every model's weights and offset, with a SHA-256 checksum over all
        of it (an HMAC-SHA256 signature with a ``key``). It is written to a
        temporary file in the same directory and renamed over ``path`` only
        once complete: an error or a crash never leaves a partial file at
        ``path``, and an existing file stays as it was unless the save
        succeeds. `load` gives back a space that is equal bit for bit and
        registers new models exactly as this one would.

        Parameters
        ----------
        path : str, bytes, os.PathLike or binary file object
            Where to write; used as given (no suffix is added). A file object
            (``open(..., "wb")``, ``io.BytesIO``) is written directly: if the
            save fails, it holds part of an archive.
        config : ProjectionConfig, TrainingResult or dict, optional
            The training configuration to record in the header. By default
            that of the last successful `train_projections` (callback
            omitted), or the one in the file this space was loaded from:
            either as long as no model was registered or trained since, else
            none.
        key : bytes, optional
            Sign the file with HMAC-SHA256 under this secret key instead of
            a plain checksum: `load` with the same key then also proves that
            the file was written by a holder of the key (a plain checksum
            detects accidental damage, not deliberate edits; see
            docs/reliability.md).
        """
        from ._files import space_file

        space_file.save(self._snapshot, self._dtype, path, config=config, key=key)

    @classmethod
    def load(cls, path: Path, *, key: bytes | None = None) -> LatentSpace:
        """Read a space written by `save`.

        The file is treated as untrusted: whatever its content, loading it
        either gives a space or raises `SpaceFileError` (see
        docs/reliability.md).

        Parameters
        ----------
        path : str, bytes or os.PathLike
            A regular file (not a FIFO, a device or a directory).
        key : bytes, optional
            The key the file was signed with (see `save`). Required for a
            signed file; a file without a signature is then refused.

        Returns
        -------
        LatentSpace

        Raises
        ------
        SpaceFileError
            A ``ValueError``: the file is truncated, corrupted, edited, of
            another format version, not a saved space, or its signature does
            not match ``key``. Nothing is loaded.
        OSError
            If the file cannot be opened.
        """
        from ._files import space_file

        space = cls.__new__(cls)
        space._install(*space_file.load(path, key=key))
        return space

    def __getstate__(self) -> dict[str, Any]:
        from ._files import space_file

        return space_file.getstate(self._snapshot, self._dtype)

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ._files import space_file

        self._install(*space_file.setstate(state))

    def search(
        self, source: str, queries: ArrayLike, target: str, gallery: ArrayLike, *,
        k: int = 10, method: str = "csls", csls_k: int = 10,
        batch_size: int | None = None,
    ) -> SearchResult:
        """The ``k`` items of ``gallery`` (model ``target``) that best match
        each of ``queries`` (model ``source``), best first.

        Queries and gallery are projected into the space and compared by
        cosine similarity or by CSLS (cross-domain similarity local scaling,
        Conneau et al. 2018), which corrects hubness:
        ``CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y)``, with ``r_T(x)`` the
        mean cosine of query ``x`` to its ``csls_k`` nearest gallery items and
        ``r_S(y)`` that of gallery item ``y`` to its ``csls_k`` nearest
        queries (the batch of queries is the source reference set; an
        `index` can hold a fixed reference sample instead). Scores are
        computed in blocks of query rows (BLAS GEMM, top-k by
        ``np.argpartition``): the full ``n_queries x n_gallery`` matrix is
        never built. For a gallery searched repeatedly, build an `index`.

        Parameters
        ----------
        source : str
            The model that embedded ``queries``.
        queries : array-like of shape (n_queries, d_source) or (d_source,)
        target : str
            The model that embedded ``gallery``.
        gallery : array-like of shape (n_gallery, d_target)
            Memory-mapped and Dask arrays (queries too) are read a block of
            rows at a time.
        k : int, default=10
            Hits per query, at most ``n_gallery``.
        method : {"csls", "cosine"}, default="csls"
        csls_k : int, default=10
            Neighbourhood size of CSLS.
        batch_size : int, optional
            Query rows per block of scores; by default about 32 MiB of scores.

        Returns
        -------
        SearchResult
            A named tuple ``(scores, indices)`` (the order of scikit-learn's
            ``kneighbors`` and FAISS's ``search``): scores and gallery rows
            (int64), shapes ``(n_queries, k)`` (``(k,)`` for one query vector).

        Raises
        ------
        KeyError
            If a model is not registered.
        ValueError, TypeError
            If an array has the wrong shape, holds NaN or Inf, or a parameter
            is out of range (``k`` larger than the gallery included).
        """
        from . import _search

        return _search.search(
            self, source, queries, target, gallery, k=k, method=method,
            csls_k=csls_k, batch_size=batch_size,
        )

    def index(
        self, target: str, gallery: ArrayLike, *, backend: str = "exact",
        kind: str = "flat", options: Mapping[str, int] | None = None,
        references: Data | None = None, csls_k: int = 10,
        batch_size: int | None = None,
        callback: Callable[[int, int], object] | None = None,
        progress: bool = False,
    ) -> GalleryIndex:
        """An index of ``gallery`` (model ``target``) for repeated search.

        The gallery is projected and normalised once, with the current
        weights (retraining the space later does not change the index), a
        block of rows at a time: a memory-mapped or Dask gallery larger than
        memory is read block by block, and only its latents (``n_gallery x
        dim``) are held.

        Parameters
        ----------
        target : str
        gallery : array-like of shape (n_gallery, d_target)
        backend : {"exact", "faiss"}, default="exact"
            "exact": a `GalleryIndex`, which scans every item (BLAS GEMM).
            "faiss": a `FaissIndex`, searched by FAISS (``pip install
            "latentspace[faiss]"``).
        kind : {"flat", "hnsw", "ivf"}, default="flat"
            The FAISS index: "flat" is exact, "hnsw" a graph and "ivf" an
            inverted file, both approximate (see `FaissIndex`). The exact
            backend is "flat".
        options : dict, optional
            Parameters of the FAISS index kind (see `FaissIndex`).
        references : mapping of str to array-like, optional
            Reference samples of source models for CSLS, ``{source: (n_ref,
            d_source) items}``; see `GalleryIndex.add_reference`. A source
            without one uses each batch of queries as its reference set (the
            exact backend; a FAISS index needs a reference for CSLS).
        csls_k : int, default=10
        batch_size : int, optional
        callback : callable, optional
            Called as ``callback(n_done, n_gallery)`` after every block of
            the gallery (progress reports while a large gallery is indexed).
        progress : bool, default=False
            Show a tqdm progress bar of the gallery's blocks (tqdm must be
            installed).

        Returns
        -------
        GalleryIndex or FaissIndex
            Its ``search(source, queries, k=10, method="csls")`` returns a
            `SearchResult`; it may be called from many threads at once.
            ``save(path)`` writes it to a file, ``GalleryIndex.load(path)``
            reads it back.
        """
        from . import _search

        return _search.make_index(
            self, target, gallery, backend=backend, kind=kind, options=options,
            references=references, csls_k=csls_k, batch_size=batch_size,
            callback=callback, progress=progress,
        )

    def evaluate(
        self, data: Data, *, k: int | Iterable[int] = (1, 10), method: str = "csls",
        csls_k: int = 10, batch_size: int | None = None,
    ) -> Evaluation:
        """Cross-model retrieval and reconstruction scores on aligned data.

        For every ordered pair of models ``A -> B``: the top-``k`` accuracy
        and mean reciprocal rank with which an item embedded by ``A`` finds
        the same item among all items embedded by ``B`` (by `search`'s
        ``method``), and the R^2 of ``translate(A, B, x_A)``; for every model
        the R^2 of its reconstruction. See `latentspace.metrics`.

        Parameters
        ----------
        data : mapping of str to array-like of shape (n, d_m)
            Aligned held-out items (row ``i`` of every array is one item).
        k : int or sequence of int, default=(1, 10)
        method : {"csls", "cosine"}, default="csls"
        csls_k : int, default=10
        batch_size : int, optional

        Returns
        -------
        latentspace.metrics.Evaluation
            ``.retrieval[(a, b)]["top1"]``, ``.mean("top1")``,
            ``.reconstruction_r2[name]``, ``.to_dict()``; printing it shows a
            table.
        """
        from . import metrics

        return metrics.evaluate(
            self, data, k=k, method=method, csls_k=csls_k, batch_size=batch_size
        )
