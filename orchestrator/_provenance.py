"""Where a result came from: library versions and the git commit (trainers/_provenance.py, shared
with the trainer so a single run and a sweep record the same facts)."""

from trainers._provenance import TRACKED_PACKAGES, git_commit, provenance, versions

__all__ = ["TRACKED_PACKAGES", "git_commit", "provenance", "versions"]
