"""End to end on the production instance config (deploy/dagster.yaml): dagster-postgres
storage on the local PostgreSQL, the run queue and pools, dagster-daemon and
dagster-webserver, driven through the webserver's GraphQL API by real clients."""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from kryonix_dagster.engine import pg
from kryonix_dagster.demo import seed_tenant

from .conftest import ROOT, free_port
from .repository_view import restore_points
from .test_sessions import alive

LOCATION = "kryonix_dagster.definitions"
TIER_ASSETS = ["postgresql_backup", "redis_backup", "object_storage_backup", "rabbitmq_backup", "app_data_backup",
               "compliance_backup", "restore_point"]


class GraphQL:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)

    def __call__(self, query: str, **variables):
        resp = requests.post(self.url, json={"query": query, "variables": variables}, timeout=60)
        resp.raise_for_status()
        doc = resp.json()
        assert "errors" not in doc, doc["errors"]
        return doc["data"]


class Budget:
    """Every wait of the test draws on one total budget, so their sum stays under the test's
    timeout; each wait also has a limit of its own."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def wait(self, predicate, seconds: float, what: str, interval: float = 1.0):
        start = time.monotonic()
        deadline = min(self.deadline, start + seconds)
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                print(f"{what}: {time.monotonic() - start:.0f}s")
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what} "
                             f"({'the test budget' if deadline == self.deadline else f'{seconds:.0f}s'} spent)")


BUDGET_SECONDS = 300  # all the waits of the test together (its timeout adds the seeding and the teardown)
LEASE_TTL = 30  # seconds: a killed run's lease expires within it, and the retry waits for that


@pytest.fixture
def seeded(settings, tenant_factory):
    """Two small tenants, seeded before the daemon starts (its sensor sees them on its first tick)."""
    tenants = [tenant_factory("a"), tenant_factory("b")]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda tid: seed_tenant(settings, tid, scale=0.05), tenants))
    return tenants


@pytest.fixture
def production(settings, tmp_path, seeded):
    budget = Budget(BUDGET_SECONDS)
    db = "kryonix_test_dagster_" + secrets.token_hex(4)
    pg.create_database(settings.pg_dsn, db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    # schedules off: a tick during the test would back up every active tenant of the registry
    env = dict(os.environ, DAGSTER_HOME=str(home), DAGSTER_PG_HOST="127.0.0.1", DAGSTER_PG_PORT="5432",
               DAGSTER_PG_USERNAME="postgres", DAGSTER_PG_PASSWORD="", DAGSTER_PG_DB=db,
               PYTHON=sys.executable, KRYONIX_SCHEDULES_RUNNING="false", KRYONIX_LEASE_TTL_SECONDS=str(LEASE_TTL))
    subprocess.run([str(ROOT / "deploy" / "pools.sh")], env=env, check=True, capture_output=True)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                         stdout=open(logs / "daemon.log", "w"), stderr=subprocess.STDOUT),
        subprocess.Popen([str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                         cwd=ROOT, env=env, stdout=open(logs / "webserver.log", "w"), stderr=subprocess.STDOUT),
    ]
    try:
        budget.wait(lambda: _up(port), 120, "dagster-webserver")
        yield GraphQL(port), budget, seeded
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.iterdir():
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")
        pg.drop_database(settings.pg_dsn, db)


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
    except requests.RequestException:
        return False


PARTITIONS = """query { partitionSetsOrError(repositorySelector: {repositoryLocationName: "%s", repositoryName: "__repository__"}) {
  ... on PartitionSets { results { name } } } }"""


RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
RUN_LOG = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events { __typename
  ... on MessageEvent { message } } } } }"""
RETRIES_OF = """query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/parent_run_id", value: $id}]}) {
  ... on Runs { results { runId status tags { key value } } } } }"""
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def run_process(gql: GraphQL, run_id: str) -> int | None:
    """The pid of the run's own process, from its "Started process for run (pid: N)." event."""
    events = gql(RUN_LOG, id=run_id)["logsForRun"].get("events") or []
    found = [re.search(r"Started process for run \(pid: (\d+)\)", e.get("message") or "") for e in events]
    return next((int(m.group(1)) for m in found if m), None)


@pytest.mark.slow(150)
@pytest.mark.timeout(420)
def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def kill_tree(pid: int) -> None:
    """SIGSTOP the process (it starts nothing more), then SIGKILL it and every descendant."""
    os.kill(pid, signal.SIGSTOP)
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_instance_graphql_queue_pools_retries_and_backfill(production, settings, cli):
    gql, budget, (t1, t2) = production

    repo = gql("""query { repositoryOrError(repositorySelector: {repositoryLocationName: "%s", repositoryName: "__repository__"}) {
      ... on Repository { schedules { name scheduleState { status } } sensors { name } jobs { name }
        assetNodes { assetKey { path } isPartitioned assetChecksOrError { ... on AssetChecks { checks { name } } } } } } }"""
               % LOCATION)["repositoryOrError"]
    nodes = {n["assetKey"]["path"][0]: n for n in repo["assetNodes"]}
    assert set(TIER_ASSETS) | {"fleet_backup_report"} <= set(nodes)
    assert all(nodes[a]["isPartitioned"] for a in TIER_ASSETS)
    checks = {c["name"] for c in nodes["restore_point"]["assetChecksOrError"]["checks"]}
    assert checks == {"consistency", "tier_data_kept", "retention", "freshness", "integrity", "restore_drill", "erasure_ledger_applied"}
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    assert {"basic_incremental_backup_schedule", "pro_full_backup_schedule", "enterprise_integrity_schedule",
            "retention_schedule"} <= set(schedules)
    assert set(schedules.values()) == {"STOPPED"}  # KRYONIX_SCHEDULES_RUNNING=false: no tick backs anything up
    assert {s["name"] for s in repo["sensors"]} == {"tenant_partitions_sensor", "stale_backups_sensor",
                                                    "failed_runs_sensor", "backup_batch_success_sensor",
                                                    "fleet_digest_sensor"}
    assert {"backup_tenant_job", "backup_batch_job", "retention_job", "integrity_job", "drill_job"} <= {
        j["name"] for j in repo["jobs"]}

    # the pools and the run queue's limits in effect in the running instance (deploy/pools.sh,
    # deploy/dagster.yaml)
    instance = gql("""query { instance { concurrencyLimits { concurrencyKey slotCount }
      runQueueConfig { maxConcurrentRuns tagConcurrencyLimitsYaml } } }""")["instance"]
    slots = {c["concurrencyKey"]: c["slotCount"] for c in instance["concurrencyLimits"]}
    assert slots == {"postgres": 4, "s3": 6, "redis": 6, "rabbitmq": 4, "kryonix_sessions": 8,
                     "kryonix_repository": 2, "kryonix_drills": 1, "kryonix_offsite": 2}
    queue = instance["runQueueConfig"]
    assert queue["maxConcurrentRuns"] == 8
    limits = {(lim["key"], lim["value"]): lim["limit"] for lim in yaml.safe_load(queue["tagConcurrencyLimitsYaml"])}
    assert limits == {("kryonix/plan", "basic"): 3, ("kryonix/plan", "pro"): 3, ("kryonix/plan", "enterprise"): 4,
                      ("kryonix/kind", "integrity"): 2, ("kryonix/kind", "restore_drill"): 1}

    # the partition sensor, ticking in the daemon, turns the registry into partitions
    def partitions():
        data = gql("""query { partitionSetOrError(repositorySelector: {repositoryLocationName: "%s", repositoryName: "__repository__"},
          partitionSetName: "backup_tenant_job_partition_set") { ... on PartitionSet { partitionsOrError { ... on Partitions {
          results { name } } } } } }""" % LOCATION)
        names = {p["name"] for p in data["partitionSetOrError"]["partitionsOrError"]["results"]}
        return {t1, t2} <= names and names
    budget.wait(partitions, 120, "the tenant partitions")

    # submitted together: one tenant's session through the run queue, and a backfill of both
    # tenants from the API the UI uses
    run_id = gql.client.submit_job_execution("backup_tenant_job", repository_location_name=LOCATION,
                                             tags={"dagster/partition": t1, "kryonix/plan": "basic"})
    launched = gql("""mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
      __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                   params={"selector": {"partitionSetName": "backup_tenant_job_partition_set",
                                        "repositorySelector": {"repositoryLocationName": LOCATION,
                                                               "repositoryName": "__repository__"}},
                           "partitionNames": [t1, t2]})
    backfill = launched["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill

    # the queued run's process dies with everything it started (kill -9 of the whole tree, as a
    # lost host or an OOM-killed container): the instance's run retries (deploy/dagster.yaml:
    # max_retries 1) launch it again, and the retry backs the tenant up. Killing the run process
    # alone would leave a step subprocess that may already run the session and finish it.
    def started_process():
        return gql(RUN_STATUS, id=run_id)["runOrError"]["status"] == "STARTED" and run_process(gql, run_id)
    pid = budget.wait(started_process, 120, "the queued run's process", interval=0.5)
    assert alive(pid), f"run process {pid} ended before the kill"
    kill_tree(pid)
    assert budget.wait(lambda: (s := gql(RUN_STATUS, id=run_id)["runOrError"]["status"]) in FINISHED and s,
                       60, "the killed run marked finished") == "FAILURE"

    def retried():
        runs = gql(RETRIES_OF, id=run_id)["runsOrError"]["results"]
        return runs and runs[0]["status"] in FINISHED and runs
    [retry] = budget.wait(retried, 240, "the automatic retry of the killed run", interval=2)
    assert retry["status"] == "SUCCESS"
    assert {t["key"]: t["value"] for t in retry["tags"]}["dagster/retry_number"] == "1"

    def backfill_done():
        data = gql("""query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }""",
                   id=backfill["backfillId"])
        state = data["partitionBackfillOrError"]["status"]
        return state in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED") and state
    assert budget.wait(backfill_done, 240, "the backfill", interval=2) in ("COMPLETED", "COMPLETED_SUCCESS")

    # restore points as restic lists them: the retry's and the backfill's for t1 (the killed
    # run left none), the backfill's for t2; and each is a materialization in the instance
    made = {tid: restore_points(settings, tid) for tid in (t1, t2)}
    assert {tid: len(points) for tid, points in made.items()} == {t1: 2, t2: 1}
    for tid in (t1, t2):
        listed = json.loads(cli("snapshots", tid, "--json").stdout)
        assert {p["session"] for p in listed} == made[tid], tid
    counts = gql("""query { assetNodes(assetKeys: [{path: ["restore_point"]}]) { partitionStats { numMaterialized } } }""")
    assert counts["assetNodes"][0]["partitionStats"]["numMaterialized"] == 2  # two partitions materialized
    with pytest.raises(DagsterGraphQLClientError):
        gql.client.submit_job_execution("no_such_job", repository_location_name=LOCATION)
