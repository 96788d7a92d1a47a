"""liger/logs.py: a library's repeated warnings shown once per process."""

import logging

from liger.logs import once_per_process


def test_each_message_of_a_logger_family_passes_once(caplog):
    child = logging.getLogger("chatty.models")
    once_per_process("chatty")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            child.warning("the same warning for every model")
            logging.getLogger("chatty").warning("model %d", 1)
        child.warning("a new one")
        logging.getLogger("other").warning("the same warning for every model")
        logging.getLogger("other").warning("the same warning for every model")
    assert [r.getMessage() for r in caplog.records] == [
        "the same warning for every model", "model 1", "a new one", "the same warning for every model",
        "the same warning for every model"]
