import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from smsroute import InvalidMessage, InvalidNumber, Message
from smsroute.contrib.django import get_router


@csrf_exempt
@require_POST
def send(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    message = Message(
        to=body["to"], text=body["text"], category=body.get("category", "transactional")
    )
    try:
        result = get_router().send(message)
    except (InvalidNumber, InvalidMessage) as exc:
        return JsonResponse({"error": str(exc)}, status=422)
    if not result.ok:
        return JsonResponse({"error": result.reason}, status=502)
    answer = {"message_id": result.message_id, "status": result.status, "provider": result.provider}
    return JsonResponse(answer, status=202)


@require_GET
def message_status(request: HttpRequest, message_id: str) -> JsonResponse:
    state = get_router().status(message_id)
    if state is None:
        return JsonResponse({"error": "unknown message"}, status=404)
    return JsonResponse(
        {"message_id": message_id, "status": state.status, "provider": state.provider}
    )
