"""The top layer: the CLI entry point, the scheduled jobs and `routerops up`'s process supervision.

It imports every layer below it (routerops, training, serving, monitoring); nothing imports it."""
