from django.urls import include, path

from smsservice import views

urlpatterns = [
    path("send", views.send),
    path("messages/<str:message_id>", views.message_status),
    path("sms/", include("smsroute.contrib.django")),  # the providers' webhooks
]
