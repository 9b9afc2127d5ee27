"""Out of a run and back: corrected manifests, Label Studio tasks, reviewers' decisions."""
