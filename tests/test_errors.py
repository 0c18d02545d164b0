"""first_line: the one line of a library error that a user message quotes."""

from __future__ import annotations

from sketchtune.errors import ConfigError, first_line, root_cause


def test_first_line_takes_the_first_non_empty_line_stripped():
    err = ValueError("\n  Error tokenizing data.  \nC error: line 3\n")
    assert first_line(err) == "Error tokenizing data."


def test_first_line_of_an_empty_error_is_its_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   \n")) == "RuntimeError"


def test_first_line_cuts_to_the_limit_at_a_word_with_an_ellipsis():
    assert first_line("x" * 500) == "x" * 157 + "..."
    assert first_line(OSError("y" * 500), 120) == "y" * 117 + "..."
    cut = first_line("Max retries exceeded with url: /api (x)", 30)
    assert cut == "Max retries exceeded with..."
    assert first_line("short enough", 12) == "short enough"


# Ray's error when a trial finds no storage marker: a header, a repr of its settings, the cause.
RAY_STORAGE = RuntimeError(
    "Unable to set up cluster storage with the following settings:\nStorageContext<\n"
    "  storage_filesystem='s3',\n  storage_fs_path='b/sweeps/tiny/ray',\n>\nCheck that all "
    "nodes in the cluster have read/write access to the configured storage path.")
# Ray's error under the one a driver without the cluster's token gets: a traceback as text.
RAY_GCS = RuntimeError(
    "Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
    '  File "ray/_private/node.py", line 996, in _init_gcs_client\n    client = GcsClient(\n'
    "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is "
    "missing or incorrect. Note: RAY_AUTH_MODE is currently 'disabled' (not 'token').\n")


def test_first_line_skips_headers_ending_in_a_colon_for_the_line_that_carries_the_cause():
    assert first_line(RAY_STORAGE) == ("Check that all nodes in the cluster have read/write "
                                       "access to the configured storage path.")
    assert first_line(RAY_GCS).startswith("ray.exceptions.AuthenticationError: RPC error: "
                                          "InvalidAuthToken: Authentication token is missing")


def test_first_line_of_headers_only_is_the_first_header():
    assert first_line("Errors:\n  Details:") == "Errors:"


def _raise_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        raise outer from inner
    except BaseException as err:  # noqa: BLE001 - built to be inspected
        return err


def _raise_during(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:  # noqa: BLE001
            raise outer  # noqa: B904 - the implicit chain is what is tested
    except BaseException as err:  # noqa: BLE001
        return err


def test_root_cause_follows_the_chain_explicit_and_implicit_to_the_innermost_error():
    inner = RuntimeError("the cause")
    assert root_cause(_raise_from(ConnectionError("Failed to connect"), inner)) is inner
    assert root_cause(_raise_during(ConnectionError("Failed to connect"), inner)) is inner
    ray_wrapper = RuntimeError("ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)")
    ray_wrapper.cause = _raise_during(ValueError("middle"), inner)
    assert root_cause(ray_wrapper) is inner


def test_root_cause_stops_where_the_context_was_suppressed():
    outer = ValueError("one line of our own")
    outer.__context__, outer.__suppress_context__ = OSError("library detail"), True
    assert root_cause(outer) is outer


def test_root_cause_keeps_a_user_error_that_wraps_a_library_error():
    """A user error's message is the line a user reads (it names the file), not its cause's."""
    ours = _raise_from(ConfigError("sweep.yaml: data.folds_csv: cannot be read"), OSError("EIO"))
    assert root_cause(ours) is ours
    ray_wrapper = RuntimeError("ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)")
    ray_wrapper.cause = ours
    assert root_cause(ray_wrapper) is ours


def test_root_cause_of_ray_s_join_error_names_the_token():
    err = _raise_from(ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379"),
                      RAY_GCS)
    assert "InvalidAuthToken" in first_line(root_cause(err))
