"""The application layer: experiment configs, the experiment factory, the runner, reports, the CLI,
benchmarks and the Flower apps. Nothing below this layer imports it."""
