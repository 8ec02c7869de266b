from django.conf import settings
from django.http import JsonResponse

from monitoring.metrics import UPLOADS_REJECTED
from tenants.errors import error_body


class UploadSizeLimitMiddleware:
    """Refuse an over-limit body from its Content-Length, before Django reads or stores any of it:
    413 with a JSON error on the API, a readable page on the dashboard."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        # The API takes one file a request; the dashboard form may carry several, each of which
        # the service checks exactly. Multipart framing adds a little.
        api = request.path.startswith("/api/")
        if request.META.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
            allowed = settings.UPLOAD_MAX_BYTES * (1 if api else settings.DASHBOARD_MAX_FILES) + 64 * 1024
            limit = settings.UPLOAD_MAX_BYTES // (1024 * 1024)
            message, field = f"The upload is larger than the {limit} MB limit.", "file"
        else:  # JSON and form bodies: Django's own cap, answered here as 413 instead of a bare 400
            allowed = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            message, field = f"The request body is larger than the {allowed // (1024 * 1024)} MB limit.", None
        if length > allowed:
            UPLOADS_REJECTED.labels(reason="too_large").inc()
            if api:
                return JsonResponse(error_body("too_large", message, field), status=413)
            from django.shortcuts import render

            return render(request, "dashboard/error.html", {"message": message}, status=413)
        return self.get_response(request)
