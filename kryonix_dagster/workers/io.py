"""An IO manager for small JSON values, kept in the run's own event log.

A batch run's split step hands each chunk step a short list of tenant ids. With the Celery
executor those steps run on different hosts, so the value must live where every worker can
read it: the instance's event log (PostgreSQL in a deployment) already is. The value goes
into the metadata of the output's HANDLED_OUTPUT event (so the UI shows which tenants a
chunk holds) and is read back from there; no shared folder, nothing to clean up.
"""
from __future__ import annotations

import json

from dagster import DagsterEventType, InputContext, IOManager, MetadataValue, OutputContext, io_manager

CHUNKS_IO_KEY = "kryonix_chunks_io"  # the resource key batch jobs' split steps write through
VALUE_KEY = "kryonix/value"
MAPPING_KEY = "kryonix/mapping_key"
MAX_CHARS = 64_000  # tenant lists, not data


class EventLogIOManager(IOManager):
    def handle_output(self, context: OutputContext, obj) -> None:
        text = json.dumps(obj, sort_keys=True)
        if len(text) > MAX_CHARS:
            raise ValueError(f"output {context.name} is {len(text)} characters of JSON; "
                             f"the event-log IO manager carries at most {MAX_CHARS}")
        context.add_output_metadata({VALUE_KEY: MetadataValue.json(obj),
                                     MAPPING_KEY: context.mapping_key or ""})

    def load_input(self, context: InputContext):
        upstream = context.upstream_output
        mapping_key = upstream.mapping_key or ""
        records = context.instance.get_records_for_run(
            upstream.run_id, of_type=DagsterEventType.HANDLED_OUTPUT, limit=100_000).records
        for record in records:
            event = record.event_log_entry.dagster_event
            data = event.event_specific_data
            if event.step_key != upstream.step_key or data.output_name != upstream.name:
                continue
            entry = data.metadata.get(MAPPING_KEY)
            if entry is not None and entry.value == mapping_key:
                return data.metadata[VALUE_KEY].value
        raise KeyError(f"no value of {upstream.step_key}.{upstream.name}[{mapping_key}] in run {upstream.run_id}")


@io_manager(description="Small JSON values (tenant chunks) in the run's event log: readable by every worker.")
def event_log_io_manager(_init_context) -> EventLogIOManager:
    return EventLogIOManager()
