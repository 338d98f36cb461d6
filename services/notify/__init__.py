"""Notifications: who hears about an alert, and how it reaches them (issue 14).

Rules decide *what* happened and label it (``alert`` actions, services/rules); this package
decides *who hears about it*, as Alertmanager does for Prometheus:

- ``config``: the notification file beside the rules (routing tree, receivers, inhibition
  rules, time intervals), strictly validated with file:line errors;
- ``routing``, ``inhibition``, ``time_intervals``: pure functions on plain data;
- ``receivers``: one module per receiver type: its config model, the payload it sends, and
  how one delivery attempt is made (``send``);
- ``model``: the plain data passed between them (:class:`Alert`, :class:`Notification`);
- delivery (docs/notifications.md, "Delivery"): ``alerts`` (decisions to notifications) and
  ``delivery`` (the retry policy) are pure; ``queue`` (the stream's messages), ``firing``,
  ``queuer``, ``sender``, ``deadletters`` (``notify list|replay``) and ``service``
  (:class:`~services.notify.service.Notifier`) are the thin shell on NATS;
- ``call_summary``, ``crm``, ``crm_cli``: CRM write-back, one summary of a captioned call and
  its decisions, shaped by a CRM mapping file (CEL) into the CRM's own request.
"""
