"""Routing traffic to a trained student: routes (``routes``), the per-request decision
(``decide``), the route table kept in step with the store (``table``), the data path
(``router``), shadow traffic (``shadow``) and the operations behind ``/admin/routes`` and
``stillroom routes`` (``service``)."""
