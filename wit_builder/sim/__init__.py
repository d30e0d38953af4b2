"""The demo's simulated world: a Wikipedia, a web, a renderer, held-out sets, a loopback
server and fixture writers. Imported only by the demo, the tests and the benchmarks."""
