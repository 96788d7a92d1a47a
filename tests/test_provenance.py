from liger.provenance import git_state, provenance


def test_the_commit_of_a_copied_tree_comes_from_the_environment(monkeypatch):
    """A copy of a working tree whose .git is stale (the lent GPU machines) names its commit through
    LIGER_GIT_COMMIT; without it the checkout's own HEAD is read."""
    monkeypatch.delenv("LIGER_GIT_COMMIT", raising=False)
    own = git_state()["git_commit"]
    monkeypatch.setenv("LIGER_GIT_COMMIT", "0123abcd")
    assert git_state() == {"git_commit": "0123abcd", "git_dirty": None}
    assert provenance("cpu")["git_commit"] == "0123abcd"
    monkeypatch.setenv("LIGER_GIT_COMMIT", "")
    assert git_state()["git_commit"] == own
