"""Property-based requests against the generated OpenAPI schema: no input yields a server error."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from config.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture
def staff_token(django_db_blocker):
    from api.tokens import create_token
    from tests.factories import BatchFactory, UserFactory, make_pairs

    staff = UserFactory(is_staff=True)
    batch = BatchFactory(annotators=[staff])
    make_pairs(batch, 2)
    _, token = create_token(staff)
    return token


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case, staff_token):
    response = case.call(headers={"Authorization": f"Token {staff_token}"})
    case.validate_response(response, checks=(not_a_server_error,))
