"""A single-file Django project served as WSGI (``django_app:application``): settings, URLs
and views in one module. A view, JSON, a urlencoded form, a multipart upload, a
StreamingHttpResponse, a FileResponse (Django hands its file to wsgi.file_wrapper), and the
URLs Django builds from SCRIPT_NAME and wsgi.url_scheme."""

import hashlib
import threading

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="pronghorn-tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={},
    USE_TZ=True,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path, reverse  # noqa: E402

EVENTS: dict[str, threading.Event] = {}
LOCK = threading.Lock()


def event(token: str) -> threading.Event:
    with LOCK:
        return EVENTS.setdefault(token, threading.Event())


def home(request):
    return HttpResponse("django home", content_type="text/plain")


def item(request, item_id):
    return JsonResponse({"item_id": item_id, "q": request.GET.get("q")})


def form(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    return JsonResponse({"form": request.POST.dict(), "method": request.method})


def upload(request):
    f = request.FILES["file"]
    data = f.read()
    return JsonResponse(
        {
            "name": request.POST["name"],
            "filename": f.name,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    )


def stream(request):
    """``n`` events; with a ``token`` each after the first waits for ``/release``."""
    n, token = int(request.GET.get("n", 3)), request.GET.get("token")

    def events():
        for i in range(n):
            if i and token:
                event(token).wait(10)
            yield f"data: {i}\n\n"

    return StreamingHttpResponse(events(), content_type="text/event-stream")


def release(request):
    event(request.GET["token"]).set()
    return HttpResponse("released", content_type="text/plain")


def file(request):
    name = request.GET.get("path")
    if not name:
        return HttpResponseBadRequest("no path")
    return FileResponse(open(name, "rb"), content_type="application/octet-stream")


def where(request):
    return JsonResponse(
        {
            "script_name": request.META["SCRIPT_NAME"],
            "path": request.path,
            "path_info": request.path_info,
            "home": reverse("home"),
            "external": request.build_absolute_uri(reverse("item", args=[7])),
            "scheme": request.scheme,
        }
    )


urlpatterns = [
    path("", home, name="home"),
    path("items/<int:item_id>", item, name="item"),
    path("form", form),
    path("upload", upload),
    path("stream", stream),
    path("release", release),
    path("file", file),
    path("where", where),
]

application = get_wsgi_application()
