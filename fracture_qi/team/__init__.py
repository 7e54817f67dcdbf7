"""One server for the whole FLS team: ``fracture-qi serve``.

The adjudication app and the QI dashboard on one port, behind a sign-in page, for several
signed-in users at once, each with their own kernels:

* :mod:`.launch` (in the ``fracture-qi`` process, no Voila imported): the server's command
  line, its limits, and its supervision (:func:`fracture_qi.serve.supervise`);
* :mod:`.server` (the server process): Voila in directory mode with the suite's hardening
  (:mod:`fracture_qi.voila_guard`), Jupyter's own extension points for sign-in
  (:mod:`.identity`, an ``IdentityProvider``) and authorisation (:mod:`.kernels`, an
  ``Authorizer`` and a kernel manager that knows whose each kernel is), and the pages that
  are not notebooks (:mod:`.pages`: start page, audit, accounts, health).

Roles and accounts are :mod:`fracture_qi.accounts`; the access log is
:mod:`fracture_qi.accesslog`. How a site connects its own sign-on, and the TLS reverse proxy
configuration tested here, are in ``docs/team-server.md``.
"""
