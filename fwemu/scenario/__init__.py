"""Policy regression scenarios: TOML files that script a client and a server behind fwemu and
say what each must observe (`fwemu test`).

`model` is the scenario as data, `loader` reads files, `runner` plays one in its own lab,
`report` and `junit` present results; `peer` and `timeline` are shared with `fwemu demo`.
"""
