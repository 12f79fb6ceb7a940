"""End to end on the production instance config (deploy/dagster.yaml): dagster-postgres
storage on the local PostgreSQL, the run queue and pools, dagster-daemon and
dagster-webserver, driven through the webserver's GraphQL API by real clients."""
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from kryonix_dagster.engine import pg
from kryonix_dagster.demo import seed_tenant

from .conftest import ROOT, free_port

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


def wait(predicate, seconds: float, what: str, interval: float = 1.0):
    start = time.time()
    deadline = start + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            print(f"{what}: {time.time() - start:.0f}s")
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def production(settings, tmp_path):
    db = "kryonix_test_dagster_" + secrets.token_hex(4)
    pg.create_database(settings.pg_dsn, db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), DAGSTER_PG_HOST="127.0.0.1", DAGSTER_PG_PORT="5432",
               DAGSTER_PG_USERNAME="postgres", DAGSTER_PG_PASSWORD="", DAGSTER_PG_DB=db,
               PYTHON=sys.executable)
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
        wait(lambda: _up(port), 90, "dagster-webserver")
        yield GraphQL(port), env, db
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


@pytest.mark.slow(456)
def test_instance_graphql_queue_pools_and_backfill(production, settings, tenant_factory, cli):
    gql, env, _db = production
    t1, t2 = tenant_factory("a"), tenant_factory("b")
    for tid in (t1, t2):
        seed_tenant(settings, tid, scale=0.05)

    repo = gql("""query { repositoryOrError(repositorySelector: {repositoryLocationName: "%s", repositoryName: "__repository__"}) {
      ... on Repository { schedules { name } sensors { name } jobs { name }
        assetNodes { assetKey { path } isPartitioned assetChecksOrError { ... on AssetChecks { checks { name } } } } } } }"""
               % LOCATION)["repositoryOrError"]
    nodes = {n["assetKey"]["path"][0]: n for n in repo["assetNodes"]}
    assert set(TIER_ASSETS) | {"fleet_backup_report"} <= set(nodes)
    assert all(nodes[a]["isPartitioned"] for a in TIER_ASSETS)
    checks = {c["name"] for c in nodes["restore_point"]["assetChecksOrError"]["checks"]}
    assert checks == {"consistency", "retention", "freshness", "integrity", "restore_drill", "erasure_ledger_applied"}
    schedules = {s["name"] for s in repo["schedules"]}
    assert {"basic_incremental_backup_schedule", "pro_full_backup_schedule", "enterprise_integrity_schedule",
            "retention_schedule"} <= schedules
    assert {s["name"] for s in repo["sensors"]} == {"tenant_partitions_sensor", "stale_backups_sensor",
                                                    "failed_runs_sensor"}
    assert {"backup_tenant_job", "backup_batch_job", "retention_job", "integrity_job", "drill_job"} <= {
        j["name"] for j in repo["jobs"]}

    # the partition sensor, ticking in the daemon, turns the registry into partitions
    def partitions():
        data = gql("""query { partitionSetOrError(repositorySelector: {repositoryLocationName: "%s", repositoryName: "__repository__"},
          partitionSetName: "backup_tenant_job_partition_set") { ... on PartitionSet { partitionsOrError { ... on Partitions {
          results { name } } } } } }""" % LOCATION)
        names = {p["name"] for p in data["partitionSetOrError"]["partitionsOrError"]["results"]}
        return {t1, t2} <= names and names
    wait(partitions, 150, "the tenant partitions")

    # one tenant's session through the run queue
    run_id = gql.client.submit_job_execution("backup_tenant_job", repository_location_name=LOCATION,
                                             tags={"dagster/partition": t1, "kryonix/plan": "basic"})
    status = wait(lambda: (s := gql.client.get_run_status(run_id).value) in ("SUCCESS", "FAILURE", "CANCELED") and s,
                  300, "the queued run")
    assert status == "SUCCESS"

    # a backfill of two tenants from the API the UI uses
    launched = gql("""mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
      __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                   params={"selector": {"partitionSetName": "backup_tenant_job_partition_set",
                                        "repositorySelector": {"repositoryLocationName": LOCATION,
                                                               "repositoryName": "__repository__"}},
                           "partitionNames": [t1, t2]})
    backfill = launched["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill

    def backfill_done():
        data = gql("""query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }""",
                   id=backfill["backfillId"])
        state = data["partitionBackfillOrError"]["status"]
        return state in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED") and state
    assert wait(backfill_done, 400, "the backfill", interval=3) in ("COMPLETED", "COMPLETED_SUCCESS")

    for tid, sessions in ((t1, 2), (t2, 1)):
        points = json.loads(cli("snapshots", tid, "--json").stdout)
        assert len(points) == sessions, tid
    counts = gql("""query { assetNodes(assetKeys: [{path: ["restore_point"]}]) { partitionStats { numMaterialized } } }""")
    assert counts["assetNodes"][0]["partitionStats"]["numMaterialized"] >= 2

    # the pools exist with the limits deploy/pools.sh set
    limits = gql("""query { instance { concurrencyLimits { concurrencyKey slotCount } } }""")["instance"]["concurrencyLimits"]
    slots = {c["concurrencyKey"]: c["slotCount"] for c in limits}
    assert {k: slots.get(k) for k in ("postgres", "s3", "redis", "rabbitmq")} == {"postgres": 4, "s3": 6, "redis": 6,
                                                                                    "rabbitmq": 4}
    with pytest.raises(DagsterGraphQLClientError):
        gql.client.submit_job_execution("no_such_job", repository_location_name=LOCATION)
