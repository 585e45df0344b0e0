"""The Swagger UI page at ``/api/docs/``: drf-spectacular's, with a way back to the app, and an ``OPTIONS``
answer that does not 500."""

from django.http import HttpResponse
from drf_spectacular.views import SpectacularSwaggerView


class ApiDocsView(SpectacularSwaggerView):
    template_name = "api/swagger_ui.html"

    def options(self, request, *args, **kwargs):
        # DRF answers OPTIONS with API metadata, which this page's HTML template renderer cannot render (a
        # TemplateDoesNotExist 500 for everyone). The page has no metadata: answer as a plain Django view does.
        response = HttpResponse()
        response.headers["Allow"] = ", ".join(self.allowed_methods)
        response.headers["Content-Length"] = "0"
        return response
