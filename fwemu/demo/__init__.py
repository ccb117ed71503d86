"""`fwemu demo`: a lab, fwemu inline with a built-in policy, and scripted endpoints that show
what each kind of expiry does to a connection.

`policy.toml` is the policy (one rule per case); `cases` scripts the endpoints; `timeline`
merges what they saw with fwemu's events; `runner` plays it all with `fwemu.testing`.
"""
