"""CURE's forget clusters from scikit-learn's Gaussian mixture or DBSCAN, in place of the on-device
k-means (`cure.clustering = gmm | dbscan`; the paper's ablations, docs/interpretations.md).

Both run on the host between training steps, as a k-means refresh does, and give what k-means
gives: `K` unit centroids and each point's cluster. `K` is always `cure.forget_clusters`, so the
pseudo-label head and the training state keep their shapes whatever a clusterer finds (the step
compiles once and checkpoints restore).

- Gaussian mixture: `K` components with diagonal covariances on the unit embeddings (a full
  covariance has D^2 / 2 entries per component, far more than the few dozen points each
  component holds); a point's cluster is its most probable component, a centroid the unit mean
  of its component.
- DBSCAN: cosine distance (1 - cos). It finds its own number of clusters and leaves noise
  points unassigned; here the `K` largest clusters are kept, and every noise point and every
  point of a smaller cluster joins the kept cluster of the nearest centroid. When DBSCAN finds
  fewer than `K` clusters, the missing rows repeat the found centroids; no point is assigned
  to a repeated row, and the farthest map is taken over the found rows only
  (`HostClusters.kept`), so no repeated row is ever a cluster or a pseudo-label. It stays in
  the pseudo-label head, where it only competes in the softmax.

Shape legend: N points, D features, K clusters.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class HostClusters(NamedTuple):
    """Clusters of N points.

    Attributes:
      centroids: float32 [K, D] unit centroids.
      assignment: int32 [N] each point's cluster, in [0, found) (never a repeated row).
      found: clusters the clusterer found (for DBSCAN, before keeping the K largest).
      noise: points DBSCAN left unassigned before they joined their nearest cluster (0 for GMM).
    """

    centroids: np.ndarray
    assignment: np.ndarray
    found: int
    noise: int

    @property
    def kept(self) -> int:
        """The rows of `centroids` that are clusters; the rest repeat them."""
        return min(self.found, len(self.centroids))


def _unit(x_NxD: np.ndarray) -> np.ndarray:
    # The same floor as losses.common.l2_normalize: a zero row stays zero instead of NaN.
    return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=-1, keepdims=True), 1e-12)


def gmm_clusters(unit_NxD: np.ndarray, *, num_clusters: int, seed: int,
                 num_restarts: int = 1) -> HostClusters:
    """A Gaussian mixture with diagonal covariances (scikit-learn, k-means initialised).

    Args:
      unit_NxD: [N, D] unit embeddings.
      num_clusters: K components, 1 <= K <= N.
      seed: scikit-learn's random_state.
      num_restarts: initialisations; the best likelihood wins.

    Returns:
      HostClusters: unit component means and each point's most probable component.
    """
    from sklearn.mixture import GaussianMixture

    x_NxD = np.asarray(unit_NxD, np.float64)
    gmm = GaussianMixture(n_components=num_clusters, covariance_type="diag", n_init=num_restarts,
                          random_state=seed).fit(x_NxD)
    assignment = gmm.predict(x_NxD).astype(np.int32)
    return HostClusters(_unit(gmm.means_).astype(np.float32), assignment, num_clusters, 0)


def dbscan_clusters(unit_NxD: np.ndarray, *, num_clusters: int, eps: float,
                    min_samples: int) -> HostClusters:
    """DBSCAN on cosine distance, fitted to exactly `num_clusters` rows (see the module notes).

    Args:
      unit_NxD: [N, D] unit embeddings.
      num_clusters: K rows of the result.
      eps: neighbourhood radius in cosine distance (1 - cos).
      min_samples: points (the point itself included) that make a core point.

    Returns:
      HostClusters: unit centroids (the K largest clusters, then repeats), each point's cluster
      (noise and dropped clusters joined to the nearest kept centroid), and what DBSCAN found.

    Raises:
      ValueError: DBSCAN found no cluster at all (every point is noise), naming the settings.
    """
    from sklearn.cluster import DBSCAN

    x_NxD = _unit(np.asarray(unit_NxD, np.float64))
    labels_N = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(x_NxD)
    ids, counts = np.unique(labels_N[labels_N >= 0], return_counts=True)
    if len(ids) == 0:
        raise ValueError(
            f"DBSCAN found no cluster among {len(x_NxD)} forget embeddings (cure.dbscan_eps={eps}, "
            f"cure.dbscan_min_samples={min_samples}): every point is noise; raise the eps or "
            "lower min_samples")
    # Largest first; equal sizes keep DBSCAN's order.
    kept = ids[np.argsort(-counts, kind="stable")][:num_clusters]
    found_KxD = _unit(np.stack([x_NxD[labels_N == k].mean(axis=0) for k in kept]))
    position = {int(k): i for i, k in enumerate(kept)}
    nearest_N = np.argmax(x_NxD @ found_KxD.T, axis=-1)
    assignment = np.array([position.get(int(label), nearest)
                           for label, nearest in zip(labels_N, nearest_N, strict=True)], np.int32)
    rows = np.arange(num_clusters) % len(kept)  # repeats come after every original
    return HostClusters(found_KxD[rows].astype(np.float32), assignment, len(ids),
                        int(np.sum(labels_N < 0)))
