from django.conf import settings
from django.http import JsonResponse

from monitoring.metrics import UPLOADS_REJECTED
from tenants.errors import error_body


class UploadSizeLimitMiddleware:
    """Refuse an over-limit body from its Content-Length, before Django reads or stores any of it."""

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
        allowed = settings.UPLOAD_MAX_BYTES * (1 if api else settings.DASHBOARD_MAX_FILES) + 64 * 1024
        if length > allowed:
            UPLOADS_REJECTED.labels(reason="too_large").inc()
            limit = settings.UPLOAD_MAX_BYTES // (1024 * 1024)
            message = f"The upload is larger than the {limit} MB limit."
            if api:
                return JsonResponse(error_body("too_large", message, "file"), status=413)
            from django.shortcuts import render

            return render(request, "dashboard/error.html", {"message": message}, status=413)
        return self.get_response(request)
