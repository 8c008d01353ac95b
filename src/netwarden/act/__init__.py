"""Acting on verdicts: the nftables blocker (rendering in :mod:`netwarden.act.nft`, the
libnftables binding in :mod:`netwarden.act.libnftables`, the blocker in
:mod:`netwarden.act.blocker`)."""
