"""How ``taskwarren topology plan/apply`` print what the tasks need and what the broker has."""

from __future__ import annotations

from collections.abc import Sequence

import click

from taskwarren.topology import BindingSpec, ExchangeSpec, QueueSpec, TopologyItem

#: Printed when a queue exists with other arguments than ours.
MIGRATE = """taskwarren never deletes a queue nor redeclares one with other arguments (RabbitMQ
refuses that with PRECONDITION_FAILED). To migrate a queue Q that differs:
  1. stop the workers of Q and let it drain (or move its messages with a shovel);
     producers sending meanwhile get an error when Q is gone, nothing is lost silently;
  2. delete it: rabbitmqctl delete_queue Q (and Q.dead once it is empty or replayed);
  3. run `taskwarren topology apply` again, then start the workers.
Or keep the queue as it is: TASKWARREN_QUEUE_TYPE=classic (or quorum) matches an
existing queue of that type."""


def print_topology(items: Sequence[TopologyItem], statuses: Sequence[str]) -> None:
    """One line per item; the 28 delay levels summed up unless something is amiss."""
    levels: dict[str, int] = {}
    for item, status in zip(items, statuses, strict=True):
        if _is_delay_level(item) and status.startswith(("ok", "created", "unknown")):
            key = f"{type(item).__name__}:{status.split(':')[0]}"
            levels[key] = levels.get(key, 0) + 1
            continue
        click.echo(f"{_describe(item):72} {status}")
    if levels:
        summary = ", ".join(f"{n} {k.split(':')[0].removesuffix('Spec').lower()}s "
                            f"{k.split(':')[1]}" for k, n in sorted(levels.items()))
        click.echo(f"{'delay levels taskwarren.delay.0-27':72} {summary}")


def _is_delay_level(item: TopologyItem) -> bool:
    name = item.source if isinstance(item, BindingSpec) else item.name
    return name.startswith("taskwarren.delay.") and name[len("taskwarren.delay."):].isdigit()


def _describe(item: TopologyItem) -> str:
    if isinstance(item, ExchangeSpec):
        return f"exchange {item.name} ({item.kind}, durable)"
    if isinstance(item, QueueSpec):
        args = ", ".join(f"{k}={v}" for k, v in item.arguments.items())
        return f"queue    {item.name} (durable; {args})"
    arrow = "exchange" if item.to_exchange else "queue"
    return f"binding  {item.source} -> {arrow} {item.destination} key {item.key!r}"
