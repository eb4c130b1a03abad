"""The three smoke flows of tests/api/smoke.rs, through the client that
openapi-python-client generates from the OpenAPI document (package
`scriptd_client`, generated into the cache by scripts/client-check).

Typed calls and models only: an error that `mypy --strict` finds here, or a
failure at run time, is a defect of the document, not of this file.
Usage: smoke.py BASE_URL
"""

import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from scriptd_client import AuthenticatedClient
from scriptd_client.api.commands import get_command, post_command
from scriptd_client.api.runs import finish_run, get_run, start_run, upsert_vars
from scriptd_client.api.scripts import create_script, get_script
from scriptd_client.api.versions import create_version, publish_version
from scriptd_client.models import (
    CommandAccepted,
    CommandActor,
    CommandRequest,
    CommandStatus,
    CommandView,
    CreateScriptRequest,
    CreateVersionRequest,
    FinishRequest,
    FinishRequestStatus,
    Graph,
    PublishRequestBody,
    Run,
    RunStarted,
    RunStatus,
    RunWithVars,
    ScriptView,
    StartRunRequest,
    VarItem,
    VarsUpserted,
    Version,
)
from scriptd_client.types import Response

T = TypeVar("T")


def ok(kind: type[T], response: Response[Any]) -> T:
    """The parsed answer when it is a `kind`, else an error with the answer."""
    if not isinstance(response.parsed, kind):
        raise AssertionError(f"{response.status_code}: {response.content!r}")
    return response.parsed


def smoke_script(api: AuthenticatedClient) -> tuple[uuid.UUID, Version]:
    """Script "smoke" (a fresh slug), an empty version, published."""
    slug = f"smoke-{uuid.uuid4().hex[:12]}"
    body = CreateScriptRequest(name="Smoke", slug=slug)
    script = ok(ScriptView, create_script.sync_detailed(client=api, body=body))
    graph = Graph(nodes=[], edges=[])
    version = ok(
        Version,
        create_version.sync_detailed(
            script.id, client=api, body=CreateVersionRequest(graph_json=graph)
        ),
    )
    publish = publish_version.sync_detailed(
        script.id, version.version, client=api, body=PublishRequestBody()
    )
    ok(ScriptView, publish)
    return script.id, version


def script_version_publish_shows_the_active_version(api: AuthenticatedClient) -> None:
    script_id, version = smoke_script(api)
    got = ok(ScriptView, get_script.sync_detailed(script_id, client=api))
    assert got.active_version_id == version.id, got.active_version_id
    assert got.active_version is not None
    assert got.active_version.id == version.id, got.active_version.id


def run_upsert_finish(api: AuthenticatedClient) -> None:
    script_id, _ = smoke_script(api)
    body = StartRunRequest(script_id=script_id)
    run_id = ok(RunStarted, start_run.sync_detailed(client=api, body=body)).run_id
    items = [VarItem(key="name", str_val="Ana")]
    vars_ = ok(VarsUpserted, upsert_vars.sync_detailed(run_id, client=api, body=items))
    assert vars_.upserted == 1, vars_.upserted
    finish = FinishRequest(status=FinishRequestStatus.SUCCEEDED)
    done = ok(Run, finish_run.sync_detailed(run_id, client=api, body=finish))
    assert done.status == RunStatus.SUCCEEDED, done.status
    got = ok(RunWithVars, get_run.sync_detailed(run_id, client=api))
    assert got.vars_[0].str_val == "Ana", got.vars_


def command_pending_then_completed(api: AuthenticatedClient) -> None:
    cid = uuid.uuid4()
    body = CommandRequest(
        command="Contacts.UpsertAndLink.v1",
        correlation_id=cid,
        actor=CommandActor(user_id="u_1"),
    )
    accepted = ok(CommandAccepted, post_command.sync_detailed(client=api, body=body))
    assert accepted.status == CommandStatus.PENDING, accepted.status
    deadline = time.monotonic() + 15
    while True:
        view = ok(CommandView, get_command.sync_detailed(cid, client=api))
        if view.status == CommandStatus.COMPLETED:
            break
        assert time.monotonic() < deadline, f"still {view.status} after 15 s"
        time.sleep(0.1)
    assert view.result is not None
    # An event's correlationId is a string (a command's UUID, a run id, …).
    assert view.result.correlation_id == str(cid), f"{view.result.correlation_id!r} != {cid!r}"
    assert view.result.event == "Contacts.Upserted.v1", view.result.event


FLOWS: list[Callable[[AuthenticatedClient], None]] = [
    script_version_publish_shows_the_active_version,
    run_upsert_finish,
    command_pending_then_completed,
]


def main(base_url: str) -> int:
    headers = {"x-tenant-id": "acme"}
    failed = 0
    with AuthenticatedClient(base_url=base_url, token="alice", headers=headers) as api:
        for flow in FLOWS:
            try:
                flow(api)
                print(f"PASS {flow.__name__}")
            except Exception:
                failed += 1
                print(f"FAIL {flow.__name__}")
                traceback.print_exc(file=sys.stdout)
    print(f"smoke: {len(FLOWS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
