"""Active-active directors behind ECMP: the VIPs announced over BGP by a routing daemon (BIRD) while their services
meet their quorum here (``announce`` in the configuration). ``decide`` is the pure core, ``routing`` the interface
to the routing daemon, ``bird`` its BIRD driver, ``link`` the daemon's side and ``api`` the control API's routes
(``/v1/director/drain``, ``/v1/director/enable``)."""
